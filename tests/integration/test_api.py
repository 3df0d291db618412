"""The REST API on a real uvicorn server on 127.0.0.1, with the real broker and PostgreSQL:
ingest with Idempotency-Key, status trails, deliveries and acks per institution (and nothing of
another's), dead letters, health and metrics, problem+json errors."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.audit import verify
from router.envelope import open_canonical
from router.processing import RawRecord
from router.store import AuditRow, DeadLetterRow, DeliveryState, OutboxRow, SigningKeyRow
from schemas import dump_event
from schemas.examples import raw_examples
from services.api.app import create_app
from services.api.auth import Scope
from services.bootstrap import Jokko, bootstrap
from services.reconcile import INSTITUTIONS
from services.reconcile_data import generate
from services.settings import Settings
from tests.factories import contributions, enrolments
from tests.fakes.server import serve
from tests.infra import free_port
from tests.integration.test_router_flow import route_until_idle

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
JOKKO = str(Path(sys.executable).parent / "jokko")


@dataclass
class Api:
    jokko: Jokko
    url: str
    tokens: dict[str, str]

    def client(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.tokens[who]}"}, timeout=30
        )


CLIENTS: dict[str, tuple[list[Scope], Institution | None]] = {
    "msnas": ([Scope.EVENTS_SUBMIT, Scope.EVENTS_READ], None),
    "cmu": ([Scope.DELIVERIES_READ, Scope.ACKS_WRITE], Institution.CMU),
    "css": ([Scope.DELIVERIES_READ, Scope.ACKS_WRITE], Institution.CSS),
    "operator": (
        [Scope.DEAD_LETTERS, Scope.DELIVERIES_READ, Scope.EVENTS_READ, Scope.RECONCILE],
        None,
    ),
}


@pytest.fixture
def api(jokko_settings: Callable[..., Settings]) -> Iterator[Api]:
    jokko = bootstrap(jokko_settings())
    app = create_app(jokko, max_body_bytes=200_000)
    authority = app.state.authority
    secrets = {
        name: authority.add_client(name, [s.value for s in scopes], institution=inst)
        for name, (scopes, inst) in CLIENTS.items()
    }
    try:
        with serve(app, lifespan=True) as url:
            tokens = {}
            for name, secret in secrets.items():
                r = httpx.post(
                    f"{url}/v1/oauth/token",
                    data={"grant_type": "client_credentials"},
                    auth=(name, secret),
                )
                assert r.status_code == 200, r.text
                tokens[name] = r.json()["access_token"]
            yield Api(jokko, url, tokens)
    finally:
        jokko.engine.dispose()


def example(event_type: str) -> dict[str, object]:
    doc = next(e for e in raw_examples() if e["event_type"] == event_type)
    return {**doc, "event_id": str(uuid.uuid4())}


def on_topic(api: Api) -> list[dict[str, object]]:
    consumer = KafkaConsumer(
        api.jokko.topics.canonical,
        bootstrap_servers=api.jokko.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    try:
        return [json.loads(open_canonical(api.jokko.vault, r.value, r.headers)) for r in consumer]
    finally:
        consumer.close()


def test_the_apis_signing_keys_are_sealed_under_the_keyring(api: Api) -> None:
    """The API made its signing key at the first token: the store holds it sealed under the
    keyring's data key, and the JWKS and tokens work from it."""
    with Session(api.jokko.engine) as s:
        stored = {r.kid: r.private_pem for r in s.scalars(select(SigningKeyRow))}
    assert len(stored) == 1
    [(kid, pem)] = stored.items()
    assert b"PRIVATE KEY" not in pem
    assert api.jokko.vault.sealed_under(pem) == api.jokko.vault.keyring.data.current
    assert [k["kid"] for k in httpx.get(f"{api.url}/.well-known/jwks.json").json()["keys"]] == [kid]
    with api.client("msnas") as c:
        assert c.get(f"/v1/events/{uuid.uuid4()}").status_code == 404  # the token verified


def test_idempotency_key_same_body_same_answer_other_body_conflict(api: Api) -> None:
    event = example("contribution.paid")
    with api.client("msnas") as c:
        first = c.post("/v1/events", json=event, headers={"Idempotency-Key": "k-1"})
        again = c.post("/v1/events", json=event, headers={"Idempotency-Key": "k-1"})
        other = c.post(
            "/v1/events",
            json={**event, "event_id": str(uuid.uuid4())},
            headers={"Idempotency-Key": "k-1"},
        )
    assert first.status_code == 202, first.text
    assert again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 409
    assert other.headers["content-type"] == PROBLEM
    assert [e["event_id"] for e in on_topic(api)] == [event["event_id"]], "published once"


def test_invalid_event_is_a_field_level_problem_without_the_values(api: Api) -> None:
    event = example("member.enrolled")
    bad_nin = "12345"
    event["payload"] = {**event["payload"], "nin": bad_nin, "region": "SN-XX"}  # type: ignore[dict-item]
    with api.client("msnas") as c:
        r = c.post("/v1/events", json=event)
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    locs = {e["loc"] for e in body["errors"]}
    assert {"body.payload.nin", "body.payload.region"} <= locs
    assert bad_nin not in r.text
    assert "Traceback" not in r.text
    assert on_topic(api) == [], "nothing invalid reaches the topic"


def test_batch_gives_each_item_its_result(api: Api) -> None:
    good = [example("contribution.paid"), example("claim.submitted")]
    bad = {**example("contribution.paid"), "payload": {"amount": 12.5}}
    with api.client("msnas") as c:
        r = c.post("/v1/events/batch", json=[good[0], bad, good[1]])
    assert r.status_code == 202
    body = r.json()
    assert (body["accepted"], body["invalid"]) == (2, 1)
    assert [i["status"] for i in body["items"]] == ["accepted", "invalid", "accepted"]
    assert body["items"][1]["errors"]
    assert sorted(str(e["event_id"]) for e in on_topic(api)) == sorted(
        str(g["event_id"]) for g in good
    )


def route(api: Api, events: list[object]) -> None:
    api.jokko.processor().process_batch(
        [RawRecord("canonical", 0, i, dump_event(e)) for i, e in enumerate(events)]  # type: ignore[arg-type]
    )


def test_status_trail_after_routing(api: Api) -> None:
    event = example("contribution.paid")
    with api.client("msnas") as c:
        assert c.post("/v1/events", json=event).status_code == 202
        assert c.get(f"/v1/events/{event['event_id']}").status_code == 404
        router = api.jokko.router()
        try:
            route_until_idle(router, 1)
        finally:
            router.close()
        r = c.get(f"/v1/events/{event['event_id']}")
    assert r.status_code == 200, r.text
    trail = r.json()
    assert trail["destinations"] == ["cmu", "css", "ipres"]
    stages = [s["stage"] for s in trail["trail"]]
    assert stages[:2] == ["received", "routed"]
    assert stages.count("queued") == 3


def test_institutions_see_only_their_own_and_others_do_not_exist(api: Api) -> None:
    route(api, [*enrolments(3), *contributions(3, 2)])
    with Session(api.jokko.engine) as s:
        cmu_id = s.scalars(
            select(OutboxRow.message_id).where(OutboxRow.institution == "cmu")
        ).first()
        css_id = s.scalars(
            select(OutboxRow.message_id).where(OutboxRow.institution == "css")
        ).first()
    with api.client("css") as css, api.client("cmu") as cmu:
        mine = css.get("/v1/deliveries", params={"limit": 500}).json()["items"]
        assert mine
        assert {d["institution"] for d in mine} == {"css"}
        assert css.get("/v1/deliveries", params={"institution": "cmu"}).status_code == 404
        assert css.get(f"/v1/deliveries/{cmu_id}").status_code == 404
        missing = css.get(f"/v1/deliveries/{uuid.uuid4()}")
        assert missing.status_code == 404
        assert css.get(f"/v1/deliveries/{cmu_id}").json()["detail"] == missing.json()["detail"]
        assert cmu.get(f"/v1/deliveries/{cmu_id}").status_code == 200
        assert css.post("/v1/acks/cmu", content=b"{}").status_code == 404
        assert css.get("/v1/dead-letters").status_code == 403, "not an operator"
        assert css.post("/v1/events", json=example("contribution.paid")).status_code == 403
    assert css_id is not None


def test_ack_posted_over_http_is_applied_once(api: Api) -> None:
    route(api, [*enrolments(2), *contributions(2, 1)])
    relay = api.jokko.relay(with_acks=False)
    try:
        while relay.relay_once():
            pass  # published on the institutions' topics: sent, waiting for acks
    finally:
        relay.close()
    with Session(api.jokko.engine) as s:
        rows = list(s.scalars(select(OutboxRow).where(OutboxRow.institution == "css")))
    receipts = "".join(
        f'<Receipt messageId="{r.message_id}" status="accepted" fileNumber="CSS-AF-2026-{i:06d}"/>'
        for i, r in enumerate(rows)
    )
    ack = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Acknowledgement xmlns="urn:sn:css:jokko:v1" formatVersion="1" '
        f'issuedAt="2026-06-03T10:00:00Z">{receipts}</Acknowledgement>'
    ).encode()
    with api.client("css") as css:
        first = css.post("/v1/acks/css", content=ack, headers={"content-type": "application/xml"})
        again = css.post("/v1/acks/css", content=ack, headers={"content-type": "application/xml"})
        garbage = css.post("/v1/acks/css", content=b"<not-xml")
    assert first.json() == {"applied": len(rows), "duplicates": 0, "anomalies": {}}
    assert again.json() == {"applied": 0, "duplicates": len(rows), "anomalies": {}}
    assert garbage.status_code == 422
    assert garbage.headers["content-type"] == PROBLEM
    with Session(api.jokko.engine) as s:
        states = set(s.scalars(select(OutboxRow.state).where(OutboxRow.institution == "css")))
    assert states == {DeliveryState.ACCEPTED}


def test_cursor_pages_cover_everything_once(api: Api) -> None:
    route(api, [*enrolments(4), *contributions(4, 3)])
    seen: list[str] = []
    cursor = None
    with api.client("operator") as op:
        while True:
            params: dict[str, str | int] = {"limit": 7}
            if cursor:
                params["cursor"] = cursor
            page = op.get("/v1/deliveries", params=params).json()
            seen += [d["message_id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert op.get("/v1/deliveries", params={"cursor": "%%%"}).status_code == 400
    with Session(api.jokko.engine) as s:
        everything = list(s.scalars(select(OutboxRow.message_id).order_by(OutboxRow.id)))
    assert seen == everything


def test_dead_letters_replay_and_discard_are_audited(api: Api) -> None:
    api.jokko.processor().process_batch(
        [RawRecord("canonical", 0, 1, b"not json"), RawRecord("canonical", 0, 2, b"{}")]
    )
    with api.client("operator") as op:
        listed = op.get("/v1/dead-letters").json()["items"]
        assert len(listed) == 2
        first, second = listed[0]["id"], listed[1]["id"]
        detail = op.get(f"/v1/dead-letters/{first}").json()
        assert detail["original_base64"]
        replayed = op.post(f"/v1/dead-letters/{first}/replay").json()
        assert replayed == {"id": first, "outcome": "dead_lettered"}, "still poison"
        discarded = op.post(f"/v1/dead-letters/{second}/discard", json={"reason": "test garbage"})
        assert discarded.status_code == 200
        assert discarded.json()["discarded_at"] is not None
        assert op.post(f"/v1/dead-letters/{second}/replay").status_code == 409
        assert [d["id"] for d in op.get("/v1/dead-letters").json()["items"]] == [first]
        assert op.get("/v1/dead-letters/999999").status_code == 404
    with Session(api.jokko.engine) as s:
        audit = [(a.actor, a.action) for a in s.scalars(select(AuditRow).order_by(AuditRow.id))]
        assert ("operator", "dead_letter.replay") in audit
        assert ("operator", "dead_letter.discard") in audit
        assert s.scalars(select(DeadLetterRow)).all()


def audit_after(api: Api, last_id: int) -> list[tuple[str, str, str | None, str | None]]:
    """The audit rows appended after ``last_id``: (actor, action, target, member_id)."""
    with Session(api.jokko.engine) as s:
        rows = s.scalars(select(AuditRow).where(AuditRow.id > last_id).order_by(AuditRow.id))
        return [(a.actor, a.action, a.target, a.member_id) for a in rows]


def audit_head(api: Api) -> int:
    with Session(api.jokko.engine) as s:
        return s.scalar(select(func.max(AuditRow.id))) or 0


def test_reading_a_dead_letters_original_is_audited_once_with_the_member(api: Api) -> None:
    """The original record holds the member's NIN and names: reading it appends one chained
    row naming the operator, the endpoint and the member, and none of the personal values."""
    poison = example("member.enrolled")
    payload = dict(poison["payload"])  # type: ignore[call-overload]
    poison["payload"] = {**payload, "region": "SN-XX"}  # invalid: a dead letter, kept whole
    identity: dict[str, str] = payload["identity"]
    api.jokko.processor().process_batch([RawRecord("canonical", 0, 1, json.dumps(poison).encode())])
    before = audit_head(api)
    with api.client("operator") as op:
        [listed] = op.get("/v1/dead-letters").json()["items"]
        assert audit_after(api, before) == [], "the list shows no record and no member"
        read = op.get(f"/v1/dead-letters/{listed['id']}")
        assert read.status_code == 200
        assert identity["nin"] in base64.b64decode(read.json()["original_base64"]).decode()
        assert op.get("/v1/dead-letters/999999").status_code == 404
    assert audit_after(api, before) == [
        ("operator", "read.dead_letter", f"GET /v1/dead-letters/{listed['id']}",
         poison["member_id"]),
    ]  # fmt: skip
    with Session(api.jokko.engine) as s:
        row = s.scalars(select(AuditRow).where(AuditRow.id > before)).one()
        kept = " ".join(str(v) for v in (row.actor, row.target, row.member_id, row.detail, row.at))
    personal = [identity[k] for k in ("nin", "given_names", "family_name", "phone")]
    assert not [v for v in personal if v in kept]
    assert verify(api.jokko.engine).ok


def test_reads_of_deliveries_and_trails_are_audited_with_their_members(api: Api) -> None:
    route(api, [*enrolments(3), *contributions(3, 1)])
    with Session(api.jokko.engine) as s:
        css_rows = s.execute(
            select(OutboxRow.message_id, OutboxRow.member_id, OutboxRow.event_id)
            .where(OutboxRow.institution == "css")
            .order_by(OutboxRow.id)
        ).all()
    message_id, member, event_id = css_rows[0]
    members = sorted({m for _, m, _ in css_rows})
    assert len(members) == 3
    before = audit_head(api)
    with api.client("css") as css, api.client("cmu") as cmu, api.client("operator") as op:
        assert css.get(f"/v1/deliveries/{message_id}").status_code == 200
        assert cmu.get(f"/v1/deliveries/{message_id}").status_code == 404, "not cmu's"
        assert css.get("/v1/deliveries", params={"member_id": member}).json()["items"]
        assert css.get("/v1/deliveries", params={"member_id": "MSNAS-DK-999999"}).json() == {
            "items": [],
            "next_cursor": None,
        }
        page = css.get("/v1/deliveries", params={"limit": 500}).json()["items"]
        assert {d["member_id"] for d in page} == set(members)
        assert op.get(f"/v1/events/{event_id}").status_code == 200
    rows = audit_after(api, before)
    assert rows == [
        ("css", "read.delivery", f"GET /v1/deliveries/{message_id}", member),
        ("css", "read.deliveries", "GET /v1/deliveries", member),
        ("css", "read.deliveries", "GET /v1/deliveries", None),
        ("operator", "read.event", f"GET /v1/events/{event_id}", member),
    ], "one row per read that returned someone's data; none for a 404 or an empty page"
    with Session(api.jokko.engine) as s:
        listed = s.scalars(select(AuditRow.detail).where(AuditRow.id == before + 3)).one()
    assert json.loads(listed or "") == {"members": 3, "member_ids": members}
    assert verify(api.jokko.engine).ok


def test_health_readiness_metrics_and_limits(api: Api) -> None:
    route(api, [*enrolments(2), *contributions(2, 1)])
    assert httpx.get(f"{api.url}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200, ready.text
    metrics = httpx.get(f"{api.url}/metrics").text
    assert 'jokko_deliveries{institution="css",state="pending"}' in metrics
    assert "jokko_router_consumer_lag" in metrics
    with api.client("msnas") as c:
        big = c.post("/v1/events", content=b"x" * 300_000)
        assert big.status_code == 413
        assert big.headers["content-type"] == PROBLEM
    no_token = httpx.post(f"{api.url}/v1/events", json=example("contribution.paid"))
    assert no_token.status_code == 401
    assert no_token.headers["content-type"] == PROBLEM


def test_jokko_api_command_serves_and_stops_on_sigterm(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = jokko_settings(api_port=free_port())
    proc, url = start_jokko_api(settings, tmp_path / "api.log")
    try:
        assert httpx.get(f"{url}/v1/deliveries").status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    log_text = (tmp_path / "api.log").read_text()
    # uvicorn shuts down cleanly, then re-raises the signal it caught (exit status -15)
    assert code in (0, -signal.SIGTERM), log_text
    assert "Application shutdown complete" in log_text


def start_jokko_api(
    settings: Settings,
    log_path: Path,
    *,
    tls: ssl.SSLContext | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """``jokko api`` as a process with these settings, once its /readyz answers 200 (over
    https, checked with ``tls``, when the settings give the API a certificate)."""
    env = {**os.environ, **settings_env(settings)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([JOKKO, "api"], env=env, stdout=log, stderr=subprocess.STDOUT)
    scheme = "https" if settings.api_tls_cert_file else "http"
    url = f"{scheme}://127.0.0.1:{settings.api_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", verify=tls or True).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the API did not become ready: {log_path.read_text()}")
        time.sleep(0.2)


def settings_env(settings: Settings) -> dict[str, str]:
    """The JOKKO_* variables that give a child process these settings."""
    return {
        f"JOKKO_{name.upper()}": str(value)
        for name, value in settings.model_dump().items()
        if isinstance(value, str | int | float) and not isinstance(value, bool)
    } | {
        f"JOKKO_{name.upper()}": str(getattr(settings, name))
        for name in ("api_tls_cert_file", "api_tls_key_file", "api_tls_client_ca_file")
        if getattr(settings, name) is not None
    }


def test_reconciliation_run_over_the_api_reports_exactly_the_injected(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOKKO_RECONCILE_DIR", str(tmp_path))
    buffers = {k: io.StringIO(newline="") for k in ("ledger", *INSTITUTIONS)}
    truth = generate(60, 3, {k: b.write for k, b in buffers.items()}, rate=0.05, seed=5).truth
    for name, buffer in buffers.items():
        (tmp_path / f"{name}.txt").write_text(buffer.getvalue(), encoding="utf-8", newline="")
    request = {"ledger": "ledger.txt", **{i: f"{i}.txt" for i in INSTITUTIONS}}
    scoped = {
        "ledger": "ledger.txt",
        "css": "css.txt",
        "institutions": ["css"],
        "period": "2025-02",
    }
    with api.client("operator") as op, api.client("css") as css:
        assert css.post("/v1/reconciliations", json=request).status_code == 403
        assert css.get("/v1/reconciliations").status_code == 403
        assert op.post("/v1/reconciliations", json={"ledger": "../etc/passwd"}).status_code == 422
        for bad in (
            {"period": "2025-13"},
            {"period": "2025-1"},
            {"institutions": ["cnss"]},
            {"institutions": ["ipres"], "period": "previous"},
        ):  # no ledger.csv there
            assert op.post("/v1/reconciliations", json=bad).status_code == 422, bad
        started = op.post("/v1/reconciliations", json=request)
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        _reconciled(op, run_id)
        report = op.get(f"/v1/reconciliations/{run_id}/report", params={"format": "csv"})
        html = op.get(f"/v1/reconciliations/{run_id}/report", params={"format": "html"})
        scoped_id = op.post("/v1/reconciliations", json=scoped).json()["id"]
        scoped_run = _reconciled(op, scoped_id)
        scoped_report = op.get(f"/v1/reconciliations/{scoped_id}/report", params={"format": "csv"})
        first_page = op.get("/v1/reconciliations", params={"limit": 1})
        second_page = op.get(
            "/v1/reconciliations", params={"limit": 1, "cursor": first_page.json()["next_cursor"]}
        )
        of_cmu = op.get("/v1/reconciliations", params={"institution": "cmu"}).json()
        failed = op.get("/v1/reconciliations", params={"state": "failed"}).json()
        assert op.get("/v1/reconciliations", params={"cursor": "nope"}).status_code == 400
    assert report.status_code == 200
    assert _report_keys(report.text) == truth, "exactly the injected discrepancies"
    assert html.status_code == 200
    assert "<svg" in html.text
    assert "<h2>By region, period and branch</h2>" in html.text
    assert (scoped_run["institutions"], scoped_run["period_from"]) == (["css"], "2025-02")
    assert _report_keys(scoped_report.text) == {
        t for t in truth if t[0] == "css" and t[4] in ("2025-02", "")
    }
    assert [r["id"] for r in first_page.json()["items"]] == [scoped_id]  # newest first
    assert [r["id"] for r in second_page.json()["items"]] == [run_id]
    assert second_page.json()["next_cursor"] is None
    listed = second_page.json()["items"][0]
    assert (listed["state"], listed["discrepancies"]) == ("done", len(truth))
    assert [r["id"] for r in of_cmu["items"]] == [run_id]
    assert failed == {"items": [], "next_cursor": None}


def _reconciled(op: httpx.Client, run_id: int) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while (run := op.get(f"/v1/reconciliations/{run_id}").json())["state"] != "done":
        assert run["state"] != "failed", run
        assert time.monotonic() < deadline, run
        time.sleep(0.2)
    return dict(run)


def _report_keys(report_csv: str) -> set[tuple[str, ...]]:
    cols = ("institution", "record", "kind", "member_id", "period", "branch", "ref")
    return {tuple(r[c] for c in cols) for r in csv.DictReader(io.StringIO(report_csv))}


def test_a_client_gone_mid_body_is_no_server_error_and_nothing_is_accepted(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """An overloaded API sees clients give up while it reads their body: no traceback, no
    500, nothing published (an error log with a traceback each made the overload worse)."""
    host, port = api.url.removeprefix("http://").split(":")
    body = json.dumps(example("contribution.paid")).encode()
    caplog.set_level(logging.INFO)
    for _ in range(3):
        with socket.create_connection((host, int(port))) as sock:
            head = (
                f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {api.tokens['msnas']}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])
            time.sleep(0.3)  # the route is waiting for the rest of the body
    deadline = time.monotonic() + 10
    while sum("client gone" in r.getMessage() for r in caplog.records) < 3:
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.05)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    metrics = httpx.get(f"{api.url}/metrics").text.splitlines()
    accepted = [m for m in metrics if m.startswith('jokko_api_events_total{outcome="accepted"}')]
    assert all(m.endswith(" 0.0") for m in accepted), accepted
