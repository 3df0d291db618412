"""The three fake institutions as one process of their own, for the demo: ``python -m tests.fakes``.

Real institutions are other systems, so the demo reaches the fakes the way Jokko reaches a
partner: CMU and CSS over signed HTTP on mutual TLS, IPRES through its file exchange. A small
control API on another port (plain HTTP on 127.0.0.1: the demo's knobs, not Jokko's traffic)
lets the demo (playing the institutions' IT staff) turn the fault knobs, read what each one
received and download its reconciliation extract.

Each institution verifies Jokko's Ed25519 signatures with nothing but Jokko's JWKS, fetched from
``JOKKO_FAKE_JWKS_URL`` (the API's ``/.well-known/jokko-message-keys.json``) at the first
message and again when a message names a key it does not know; IPRES checks each file's ``.sig``
with it too. A shared HMAC secret (``JOKKO_FAKE_CMU_SECRET``, ``JOKKO_FAKE_CSS_SECRET``), when
set, is checked as well (a partner whose setting is ``both``). The IPRES folders come from
``--dir``. CMU and CSS serve HTTPS with a throw-away CA made in ``--dir``/pki (tests/tls.py)
and require the client certificate it issues for Jokko; ``--plain-http`` serves them without
TLS (benchmarks that measure Jokko alone). Once everything listens, one JSON line goes to
stdout: ``{"cmu": url, "css": url, "control": url, "ipres": {"inbox": ..., "acks": ...},
"tls": {"ca_file": ..., "client_cert_file": ..., "client_key_file": ...} or null}``. SIGTERM or
SIGINT stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from tests.fakes.base import HttpFake
from tests.fakes.cmu import FakeCMU
from tests.fakes.css import FakeCSS
from tests.fakes.faults import Faults
from tests.fakes.ipres import FakeIPRES
from tests.fakes.server import serve
from tests.tls import make_pki


class FaultChange(BaseModel):
    """The knobs a demo turns; absent fields are left as they are."""

    model_config = ConfigDict(extra="forbid")

    error_rate: float | None = Field(default=None, ge=0, le=1)
    drop_rate: float | None = Field(default=None, ge=0, le=1)
    latency_s: float | None = Field(default=None, ge=0, le=30)
    down: bool | None = None
    reject_members: list[str] | None = None


def control_app(fakes: dict[str, HttpFake]) -> FastAPI:
    app = FastAPI(title="fake institutions: control", docs_url=None, redoc_url=None)

    def fake(institution: str) -> HttpFake:
        if institution not in fakes:
            raise HTTPException(404, f"no fake institution {institution}")
        return fakes[institution]

    @app.put("/faults/{institution}")
    def set_faults(institution: str, change: FaultChange) -> dict[str, Any]:
        faults: Faults = fake(institution).faults
        for name, value in change.model_dump(exclude_none=True).items():
            setattr(faults, name, set(value) if name == "reject_members" else value)
        return {"institution": institution, **change.model_dump(exclude_none=True)}

    @app.get("/stats/{institution}")
    def stats(institution: str) -> dict[str, Any]:
        f = fake(institution)
        requests = f.requests
        return {
            "requests": requests.total,
            "by_status": {str(k): v for k, v in sorted(requests.by_status.items())},
            "dropped": requests.dropped,
            "received": len(f.received),
            "accepted": len(f.recorder.accepted_ids()),
        }

    @app.get("/extract/{institution}", response_class=PlainTextResponse)
    def extract(institution: str) -> str:
        return fake(institution).extract()

    return app


def _secret(name: str) -> bytes | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    if len(value) < 32:
        sys.exit(f"{name} must hold a shared secret of at least 32 characters")
    return value.encode()


def _jwks_from(url: str) -> Callable[[], Mapping[str, Any]]:
    """Fetch Jokko's JWKS, as an institution's IT would: nothing else of Jokko is trusted."""

    def fetch() -> Mapping[str, Any]:
        try:
            answer = httpx.get(url, timeout=5)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise OSError(f"GET {url}: {exc}") from exc
        document: Mapping[str, Any] = answer.json()
        return document

    return fetch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True, help="folder for the IPRES exchange")
    parser.add_argument(
        "--no-schema-checks",
        action="store_true",
        help="CMU and CSS skip their independent R4B / XSD validation (benchmarks only)",
    )
    parser.add_argument(
        "--plain-http",
        action="store_true",
        help="CMU and CSS serve plain HTTP, not mutual TLS (benchmarks only)",
    )
    args = parser.parse_args(argv)
    jwks_url = os.environ.get("JOKKO_FAKE_JWKS_URL", "")
    jwks = _jwks_from(jwks_url) if jwks_url else None
    for name in ("JOKKO_FAKE_CMU_SECRET", "JOKKO_FAKE_CSS_SECRET"):
        if jwks is None and _secret(name) is None:
            sys.exit(f"set JOKKO_FAKE_JWKS_URL (Jokko's message-keys JWKS), {name}, or both")
    cmu = FakeCMU(_secret("JOKKO_FAKE_CMU_SECRET"), Faults(seed=1), jwks=jwks)
    css = FakeCSS(_secret("JOKKO_FAKE_CSS_SECRET"), Faults(seed=2), jwks=jwks)
    cmu.schema_checks = css.schema_checks = not args.no_schema_checks
    ipres = FakeIPRES(args.dir / "ipres-in", args.dir / "ipres-acks", Faults(seed=3), jwks=jwks)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    pki = None if args.plain_http else make_pki(args.dir / "pki")
    tls = pki.server_tls() if pki else None
    with ExitStack() as stack:
        cmu_url = stack.enter_context(serve(cmu.app, tls=tls))
        css_url = stack.enter_context(serve(css.app, tls=tls))
        stack.enter_context(ipres)
        control = stack.enter_context(serve(control_app({"cmu": cmu, "css": css, "ipres": ipres})))
        ready = {
            "cmu": f"{cmu_url}/fhir",
            "css": f"{css_url}/css/v1/documents",
            "control": control,
            "ipres": {"inbox": str(ipres.inbox), "acks": str(ipres.acks)},
            "tls": {k: str(v) for k, v in pki.partner_settings().items()} if pki else None,
        }
        print(json.dumps(ready), flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
