"""Schemathesis against the API served by uvicorn on 127.0.0.1, with the real broker and
PostgreSQL: every operation of the served OpenAPI document, a bounded number of generated
requests each (valid and invalid ones), and every answer must be no 5xx, a documented status
code and content type, and a body that conforms to the document."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from router.processing import RawRecord
from schemas import dump_event
from schemas.examples import load_examples
from services.api.app import create_app
from services.api.auth import Authority, Scope
from services.bootstrap import Jokko, bootstrap
from services.contracts import openapi_document
from services.settings import Settings
from tests.fakes.server import serve

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 20
"""Generated requests per operation and generation mode: bounded, the whole run takes ~1 min."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass
class Tally:
    operations: int = 0
    examples: int = 0
    failures: list[str] = field(default_factory=list)
    without_negative: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def seed(jokko: Jokko) -> None:
    """Routed events (inbox, trails, deliveries) and two dead letters, so that list and
    detail answers carry real records for the schema checks, not only empty pages."""
    records = [RawRecord("canonical", 0, i, dump_event(e)) for i, e in enumerate(load_examples())]
    poison = [RawRecord("canonical", 1, 0, b"not json"), RawRecord("canonical", 1, 1, b"{}")]
    jokko.processor().process_batch([*records, *poison])


def fuzz(operation: Any, mode: schemathesis.GenerationMode, token: str, tally: Tally) -> None:
    headers = {"Authorization": f"Bearer {token}"}

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Any]) -> None:
        tally.examples += 1
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    started = time.monotonic()
    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        # No request can break an operation without parameters or with an any-JSON body.
        if mode is not schemathesis.GenerationMode.NEGATIVE:
            raise
        tally.without_negative.append(operation.label)
    except (Exception, FailureGroup) as exc:  # FailureGroup: a BaseExceptionGroup
        tally.failures.append(f"{operation.label} ({mode.value}): {exc}")
    finally:
        tally.seconds[f"{operation.label} ({mode.value})"] = time.monotonic() - started


def test_no_server_error_and_every_answer_conforms(
    jokko_settings: Callable[..., Settings],
) -> None:
    jokko = bootstrap(jokko_settings())
    seed(jokko)
    # A token outliving the run: an expired one would turn every later request into a 401.
    app = create_app(jokko, authority=Authority(jokko.engine, vault=jokko.vault, token_ttl_s=3600))
    secret = app.state.authority.add_client("fuzzer", [s.value for s in Scope])
    tally = Tally()
    try:
        with serve(app, lifespan=True) as url:
            served = httpx.get(f"{url}/openapi.json").json()
            assert served == openapi_document(), "the app serves the exported document"
            r = httpx.post(
                f"{url}/v1/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=("fuzzer", secret),
            )
            assert r.status_code == 200, r.text
            token = r.json()["access_token"]
            schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
            for result in schema.get_all_operations():
                assert isinstance(result, Ok), result
                operation = result.ok()
                tally.operations += 1
                for mode in MODES:
                    fuzz(operation, mode, token, tally)
    finally:
        jokko.engine.dispose()
    print(
        f"schemathesis: {tally.operations} operations, {tally.examples} requests, "
        f"{len(tally.failures)} failing; no invalid request possible for "
        + ", ".join(tally.without_negative)
    )
    slowest = sorted(tally.seconds.items(), key=lambda kv: -kv[1])[:5]
    print("slowest: " + ", ".join(f"{k} {v:.1f}s" for k, v in slowest))
    assert tally.operations == len(
        [m for ops in served["paths"].values() for m in ops if m != "parameters"]
    )
    assert tally.examples >= tally.operations * len(MODES)
    assert not tally.failures, "\n\n".join(tally.failures)
