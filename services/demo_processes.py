"""The processes ``jokko demo`` runs and how they are wired: Jokko's own (``jokko api``,
``router``, ``relay``) and the fake institutions (``python -m tests.fakes``), each with its log,
and the environment that points Jokko at the fakes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console

from schemas.errors import JokkoError
from services.settings import Settings

REPO = Path(__file__).resolve().parent.parent
MAX_ATTEMPTS = 2
"""Small on purpose: with CSS failing 30% of requests about a tenth of its messages use up
their two tries and go dead, which the first reconciliation then finds missing."""
PUSH_BATCH = 50
"""Messages per HTTP push to CMU (its batch envelope, FORMAT.md). CSS gets one message a request,
so that its flapping strikes messages one by one and the reconciliation has something to find."""


class DemoFailed(JokkoError):
    """A step of the demo did not happen the way the flow promises."""


class Processes:
    """Child processes with their logs; stopped with SIGTERM in reverse order of start."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], *, stdout_pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        child = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops them in order
        )
        self.children.append((name, child, log))
        return child

    def check(self) -> None:
        for name, child, _ in self.children:
            if child.poll() is not None:
                raise DemoFailed(
                    f"{name} exited with {child.returncode}: see {self.logs / (name + '.log')}"
                )

    def stop(self) -> None:
        for _name, child, log in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            if child.stdout is not None:
                child.stdout.close()
            log.close()
        self.children.clear()


def jokko_argv(command: str) -> list[str]:
    script = Path(sys.executable).with_name("jokko")
    if script.exists():
        return [str(script), command]
    return [sys.executable, "-c", "from services.cli import app; app()", command]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_partners(processes: Processes, work: Path) -> tuple[dict[str, Any], str, str]:
    """The fake institutions, started: what they announce once ready, the URL the API will
    listen on (the fakes fetch Jokko's JWKS from it) and CSS's HMAC secret."""
    if not (REPO / "tests" / "fakes" / "__main__.py").is_file():
        raise DemoFailed(
            "the fake institutions live in tests/fakes of a clone of the repository; "
            "run the demo from a clone (make demo)"
        )
    # CMU verifies Jokko's Ed25519 signature only (the default); CSS asks for the HMAC
    # as well (JOKKO_CSS__SIGNATURE=both). Both fetch Jokko's JWKS from the API.
    css_secret = secrets.token_urlsafe(32)
    api = f"http://127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        "JOKKO_FAKE_JWKS_URL": f"{api}/.well-known/jokko-message-keys.json",
        "JOKKO_FAKE_CSS_SECRET": css_secret,
    }
    env.pop("JOKKO_FAKE_CMU_SECRET", None)
    child = processes.start(
        "partners",
        [sys.executable, "-m", "tests.fakes", "--dir", str(work / "partners")],
        env,
        stdout_pipe=True,
    )
    assert child.stdout is not None
    line = _readline(child.stdout, 30)
    if not line:
        processes.check()
        raise DemoFailed("the fake institutions did not start within 30 s")
    ready: dict[str, Any] = json.loads(line)
    return ready, api, css_secret


def environment(
    settings: Settings, work: Path, api: str, css_secret: str, partners: dict[str, Any]
) -> dict[str, str]:
    """Jokko's settings for the demo, as the environment of its processes."""
    port = httpx.URL(api).port
    assert port is not None  # chosen in start_partners
    return {
        "JOKKO_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "JOKKO_DATABASE_URL": f"sqlite:///{work / 'jokko.db'}",
        # The demo's own keyring beside its store: made at first start, kept with it.
        "JOKKO_KEYRING_FILE": str(work / "keyring.json"),
        "JOKKO_CANONICAL_TOPIC": settings.canonical_topic,
        "JOKKO_TOPIC_PREFIX": settings.topic_prefix,
        "JOKKO_API_HOST": "127.0.0.1",
        "JOKKO_API_PORT": str(port),
        "JOKKO_RECONCILE_DIR": str(work / "reconcile"),
        "JOKKO_ROUTER_INSTANCE_ID": "demo-router-1",
        "JOKKO_CMU__MODE": "http",
        "JOKKO_CMU__URL": partners["cmu"],
        "JOKKO_CMU__BATCH_SIZE": str(PUSH_BATCH),
        "JOKKO_CSS__MODE": "http",
        "JOKKO_CSS__URL": partners["css"],
        "JOKKO_CSS__SIGNATURE": "both",
        "JOKKO_CSS__SECRET": css_secret,
        "JOKKO_CSS__TIMEOUT_S": "5",
        **{
            f"JOKKO_{inst}__{name.upper()}": path
            for inst in ("CMU", "CSS")
            for name, path in partners["tls"].items()
        },
        "JOKKO_IPRES__MODE": "file",
        "JOKKO_IPRES__OUTBOX_DIR": partners["ipres"]["inbox"],
        "JOKKO_IPRES__ACK_DIR": partners["ipres"]["acks"],
        "JOKKO_DELIVERY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "JOKKO_DELIVERY_BACKOFF_INITIAL_S": "0.2",
        "JOKKO_DELIVERY_BACKOFF_MAX_S": "1",
        "JOKKO_DELIVERY_BREAKER_RESET_S": "1",
    }


def settings_of(env: dict[str, str]) -> dict[str, object]:
    """The same settings the child processes read, for the demo's own view of the store."""
    nested: dict[str, dict[str, str]] = {}
    flat: dict[str, object] = {}
    for name, value in env.items():
        key = name.removeprefix("JOKKO_").lower()
        if key in ("reconcile_dir",):
            continue
        if "__" in key:
            outer, inner = key.split("__", 1)
            nested.setdefault(outer, {})[inner] = value
        else:
            flat[key] = value
    return {**flat, **nested}


def _readline(stream: IO[bytes], timeout_s: float) -> str:
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return line[0].decode() if line else ""


def wait_for_ctrl_c(processes: Processes) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    Console().print("running until Ctrl-C")
    while not stop.wait(1.0):
        processes.check()
