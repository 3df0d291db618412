"""Run an ASGI app under uvicorn on a free port of 127.0.0.1, in a background thread.

``serve(app)`` yields the base URL once uvicorn listens and stops it on exit (``should_exit``,
then join). It binds port 0 and reads the port back, so parallel tests never race for a port.
uvicorn does not install signal handlers outside the main thread, and ``log_config=None``
leaves the test process's logging alone.

Dropping a connection: an ASGI app cannot reach its socket, and whatever it raises makes
uvicorn answer 500 (or, once headers are out, close after them). So the fakes run under
``_DroppingH11Protocol``, which wraps the app's ``send``: a response carrying the
``DROP_HEADER`` marker (``dropped()``) is never written; the transport is aborted instead, and
the client sees the connection close with no byte of answer (httpx: ``RemoteProtocolError``
"Server disconnected without sending a response").
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from tests.tls import ServerTLS

DROP_HEADER = b"x-jokko-fake-drop"


def dropped() -> Response:
    """What an endpoint returns to have its connection closed without any answer."""
    return Response(status_code=204, headers={DROP_HEADER.decode(): "1"})


class _DroppingH11Protocol(H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner: ASGIApp = self.app

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            dropping = False

            async def guarded_send(message: Message) -> None:
                nonlocal dropping
                if message["type"] == "http.response.start" and any(
                    name == DROP_HEADER for name, _ in message.get("headers", [])
                ):
                    dropping = True
                    self.transport.abort()
                    # Let connection_lost() run: uvicorn then sees a client that went away,
                    # not an app that forgot to answer (which it would log, and answer 500).
                    await asyncio.sleep(0)
                if not dropping:
                    await send(message)

            await inner(scope, receive, guarded_send)

        self.app = app


def _send_tls_alerts() -> None:
    """Make asyncio's TLS send its alert when a handshake fails.

    Python 3.11's ``asyncio.sslproto`` closes the connection on a failed handshake without
    writing the alert OpenSSL prepared (uvloop's, in C, does the same), so a client refused
    for its certificate only sees the connection close. The servers institutions run (nginx,
    Java) send the alert ("certificate required", "unknown ca"), and Jokko names the refusal
    from it: the fakes behave like them. Patched once, in the test process only."""
    cls = asyncio.sslproto.SSLProtocol
    if getattr(cls, "_jokko_sends_alerts", False):
        return

    def _do_handshake(self: Any) -> None:
        try:
            self._sslobj.do_handshake()
        except asyncio.sslproto.SSLAgainErrors:
            self._process_outgoing()
        except ssl.SSLError as exc:
            self._process_outgoing()  # the alert, before the connection is closed
            self._on_handshake_complete(exc)
        else:
            self._on_handshake_complete(None)

    setattr(cls, "_do_handshake", _do_handshake)  # noqa: B010 - a private method, not typed
    setattr(cls, "_jokko_sends_alerts", True)  # noqa: B010


@contextmanager
def serve(
    app: ASGIApp,
    *,
    startup_timeout_s: float = 10.0,
    lifespan: bool = False,
    tls: ServerTLS | None = None,
) -> Iterator[str]:
    """``http://127.0.0.1:<port>`` while ``app`` is served; stopped and joined on exit.

    With ``tls``, ``https://127.0.0.1:<port>``: the server presents ``tls.cert`` and, with
    ``tls.client_ca``, refuses at the handshake a client without a certificate from that CA."""
    if tls is not None:
        _send_tls_alerts()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        http=_DroppingH11Protocol,
        ws="none",
        lifespan="on" if lifespan else "off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,  # a request still waiting on latency_s is cut
        # asyncio's loop, not uvloop, under TLS: its handshake is the one taught to send alerts
        loop="asyncio" if tls else "auto",
        **(tls.uvicorn_options() if tls else {}),  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-institution", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise RuntimeError("the fake institution's server did not start")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        if thread.is_alive():  # pragma: no cover - a request that never ends
            server.force_exit = True
            thread.join(5)
