"""The fake institutions for the flow: ``python -m tests.fakes`` in a process of its own, and
what their own processing costs on these cores."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness.workload import with_profiles
from schemas import CanonicalEvent
from tests.infra import REPO


@contextmanager
def fake_institutions(
    directory: Path, logs: Path, schema_checks: bool = True
) -> Iterator[tuple[dict[str, Any], Any]]:
    """``python -m tests.fakes`` in its own process, as the demo runs it: the institutions' CPU
    is then not the bench client's, and their HTTP servers are real ones."""
    secret = {i: secrets.token_urlsafe(32) for i in ("cmu", "css")}
    env = {
        **os.environ,
        "JOKKO_FAKE_CMU_SECRET": secret["cmu"],
        "JOKKO_FAKE_CSS_SECRET": secret["css"],
    }
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "fakes.log").open("ab") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes",
                "--dir",
                str(directory),
                "--plain-http",  # Jokko's own cost, as recorded before TLS
                *([] if schema_checks else ["--no-schema-checks"]),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fakes did not start: {(logs / 'fakes.log').read_text()}")
        yield {**json.loads(line), "secrets": secret}, proc
    finally:
        proc.terminate()
        proc.wait(30)


def fake_costs(events: Sequence[CanonicalEvent], n: int = 600) -> dict[str, dict[str, float]]:
    """µs per message of the fake CMU's and CSS's own processing, with and without their
    schema checks, in this process: what the institutions' side costs on these cores."""
    import adapters.cmu
    import adapters.css
    from tests.fakes.cmu import FakeCMU
    from tests.fakes.css import FakeCSS, css_schema

    bodies: dict[str, list[Any]] = {"cmu": [], "css": []}
    for e, profile in with_profiles(events):
        if e.event_type == "contribution.paid" and len(bodies["css"]) < n:
            bodies["cmu"] += adapters.cmu.translate(e, profile)
            bodies["css"] += adapters.css.translate(e, profile)
    css_schema()  # compiled once per process, not counted
    out: dict[str, dict[str, float]] = {}
    for name, make in (("cmu", FakeCMU), ("css", FakeCSS)):
        out[name] = {}
        for checks in (True, False):
            fake = make(secrets.token_bytes(32))
            fake.schema_checks = checks
            started = time.perf_counter()
            for m in bodies[name]:
                fake.answer(m.message_id, m.body, m.content_type)
            took = time.perf_counter() - started
            out[name]["checked" if checks else "unchecked"] = took / len(bodies[name]) * 1e6
    return out
