"""The API's intake over HTTP, on a real uvicorn server with the real broker and PostgreSQL:
the MSNAS webhook and CSV upload (row-level reports, good rows kept), CMU FHIR and IPRES
acknowledgements, the deliveries filters, the events-in metric, the rate limit ``jokko api``
serves with, and no personal data in any error body or log line."""

from __future__ import annotations

import json
import logging
import re
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from adapters.base import Ack, AckStatus, Institution
from adapters.cmu import systems as fhir
from adapters.ipres.files import build_ack_file
from router.store import DeliveryState, OutboxRow
from services.api.auth import Authority, Scope
from services.settings import Settings
from tests.factories import contributions, enrolments
from tests.infra import free_port
from tests.integration.test_api import (
    PROBLEM,
    Api,
    api,
    example,
    on_topic,
    route,
    settings_env,
    start_jokko_api,
)

pytestmark = pytest.mark.integration

__all__ = ["api"]  # the fixture, shared with test_api.py

GOLDEN = Path(__file__).parents[1] / "contract" / "golden" / "msnas"


def token_for(api: Api, name: str, scopes: list[Scope], institution: Institution) -> str:
    secret = Authority(api.jokko.engine).add_client(
        name, [s.value for s in scopes], institution=institution
    )
    r = httpx.post(
        f"{api.url}/v1/oauth/token", data={"grant_type": "client_credentials"}, auth=(name, secret)
    )
    assert r.status_code == 200, r.text
    token: str = r.json()["access_token"]
    return token


def sent_rows(api: Api, institution: str) -> list[OutboxRow]:
    """Route enrolments and contributions, relay them (no acks yet): rows waiting for acks."""
    route(api, [*enrolments(3), *contributions(3, 1)])
    relay = api.jokko.relay(with_acks=False)
    try:
        while relay.relay_once():
            pass
    finally:
        relay.close()
    with Session(api.jokko.engine) as s:
        rows = list(
            s.scalars(
                select(OutboxRow).where(OutboxRow.institution == institution).order_by(OutboxRow.id)
            )
        )
    assert rows
    assert {r.state for r in rows} == {DeliveryState.SENT}
    return rows


def states(api: Api, message_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    with Session(api.jokko.engine) as s:
        return {
            r.message_id: (r.state, r.reason_code)
            for r in s.scalars(select(OutboxRow).where(OutboxRow.message_id.in_(message_ids)))
        }


# --------------------------------------------------------------------------- MSNAS formats


def test_msnas_webhook_reports_bad_records_and_publishes_the_good(api: Api) -> None:
    good = json.loads((GOLDEN / "webhook" / "adhesion.json").read_bytes())
    bad = {**good, "id_fiche": "DK-017-2026-000413", "nin": "12345", "region": "atlantide"}
    cotisation = json.loads((GOLDEN / "webhook" / "cotisation.json").read_bytes())
    with api.client("msnas") as c:
        r = c.post("/v1/msnas/webhook", json=[good, bad, cotisation])
        single = c.post("/v1/msnas/webhook", json=cotisation | {"id_fiche": "X-1", "type": "?"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected_rows"]) == (2, 1)
    assert {(e["row"], e["field"]) for e in body["errors"]} == {(2, "nin"), (2, "region")}
    assert "12345" not in r.text, "the values never come back"
    assert "atlantide" not in r.text
    published = [str(e["event_id"]) for e in on_topic(api)]
    assert sorted(published) == sorted(body["event_ids"])
    assert [e["event_type"] for e in on_topic(api)].count("member.enrolled") == 1
    assert single.status_code == 202
    assert single.json()["accepted"] == 0
    assert [(e["row"], e["field"]) for e in single.json()["errors"]] == [(1, "type")]


def test_msnas_csv_upload_keeps_the_good_rows_and_reports_each_bad_one(api: Api) -> None:
    lines = (GOLDEN / "csv" / "adhesions.csv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    broken = rows[0].replace("2230199200190", "22301992").replace("KA-001-2026-000019", "KA-9")
    unknown_region = rows[1].replace("KEDOUGOU", "Tombouctou").replace("000007", "000008")
    # spreadsheet rows: header 1, good 2, broken 3, good 4, unknown region 5, good 6
    csv = "\n".join([header, rows[0], broken, rows[1], unknown_region, rows[2]]) + "\n"
    with api.client("msnas") as c:
        r = c.post(
            "/v1/msnas/csv/adhesions", content=csv.encode(), headers={"content-type": "text/csv"}
        )
        unknown = c.post("/v1/msnas/csv/pointages", content=csv.encode())
    assert r.status_code == 202, r.text
    body = r.json()
    assert (body["accepted"], body["rejected_rows"]) == (3, 2)
    assert {(e["row"], e["field"]) for e in body["errors"]} == {(3, "nin"), (5, "region")}
    assert "22301992" not in r.text
    assert "Tombouctou" not in r.text
    topic = on_topic(api)
    assert sorted(str(e["event_id"]) for e in topic) == sorted(body["event_ids"])
    assert sorted(str(e["member_id"]) for e in topic) == [
        "MSNAS-KA-000019",
        "MSNAS-KE-000007",
        "MSNAS-TH-000289",
    ], "every good row is on the topic, none of the bad ones"
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == PROBLEM


# --------------------------------------------------------------------------- acks over HTTP


def test_cmu_fhir_acks_over_http_accept_and_reject_with_the_reason(api: Api) -> None:
    rows = sent_rows(api, "cmu")
    accepted, rejected = rows[0].message_id, rows[1].message_id
    batch = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {
                "resource": {
                    "resourceType": "Bundle",
                    "type": "transaction-response",
                    "identifier": {"system": fhir.MESSAGE_ID, "value": accepted},
                    "entry": [{"response": {"status": "201 Created", "location": "Patient/7"}}],
                }
            },
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "extension": [{"url": fhir.EXT_MESSAGE_ID, "valueString": rejected}],
                    "issue": [
                        {
                            "severity": "error",
                            "code": "business-rule",
                            "details": {
                                "coding": [{"system": fhir.REJECTION_REASON, "code": "C017"}],
                                "text": "Assuré déjà couvert",
                            },
                        }
                    ],
                }
            },
        ],
    }
    headers = {"content-type": "application/fhir+json"}
    with api.client("cmu") as cmu:
        first = cmu.post("/v1/acks/cmu", content=json.dumps(batch), headers=headers)
        again = cmu.post("/v1/acks/cmu", content=json.dumps(batch), headers=headers)
        bad = cmu.post("/v1/acks/cmu", content=b'{"resourceType": "Patient"}', headers=headers)
    assert first.status_code == 200, first.text
    assert first.json() == {"applied": 2, "duplicates": 0, "anomalies": {}}
    assert again.json() == {"applied": 0, "duplicates": 2, "anomalies": {}}
    assert bad.status_code == 422
    assert bad.headers["content-type"] == PROBLEM
    assert states(api, [accepted, rejected]) == {
        accepted: (DeliveryState.ACCEPTED, None),
        rejected: (DeliveryState.REJECTED, "C017"),
    }


def test_ipres_ack_file_over_http_applies_each_line(api: Api) -> None:
    rows = sent_rows(api, "ipres")
    token = token_for(api, "ipres", [Scope.DELIVERIES_READ, Scope.ACKS_WRITE], Institution.IPRES)
    answers = [
        Ack(r.message_id, Institution.IPRES, AckStatus.ACCEPTED, institution_ref=f"IPR-{i}")
        for i, r in enumerate(rows[1:])
    ]
    answers.insert(
        0,
        Ack(
            rows[0].message_id,
            Institution.IPRES,
            AckStatus.REJECTED,
            reason_code="R042",
            reason_text="Numero inconnu",
        ),
    )
    ack = build_ack_file(
        answers, file_id="ACK-0001", declaration_file_id="MSNAS-20260701-0001", created=date.today()
    )
    auth = {"Authorization": f"Bearer {token}", "content-type": "text/plain"}
    with httpx.Client(base_url=api.url, headers=auth) as ipres:
        r = ipres.post("/v1/acks/ipres", content=ack)
        other = ipres.post("/v1/acks/css", content=b"<x/>")
        mine = ipres.get("/v1/deliveries", params={"state": "rejected"}).json()["items"]
    assert r.status_code == 200, r.text
    assert r.json() == {"applied": len(rows), "duplicates": 0, "anomalies": {}}
    assert other.status_code == 404, "another institution's ack endpoint does not exist for it"
    found = states(api, [row.message_id for row in rows])
    assert found.pop(rows[0].message_id) == (DeliveryState.REJECTED, "R042")
    assert set(found.values()) == {(DeliveryState.ACCEPTED, None)}
    assert [d["message_id"] for d in mine] == [rows[0].message_id]


# --------------------------------------------------------------------------- deliveries filters


def test_deliveries_filter_by_state_member_and_period(api: Api) -> None:
    route(api, [*enrolments(3), *contributions(3, 2)])
    base = datetime(2026, 5, 1, tzinfo=UTC)
    with Session(api.jokko.engine) as s, s.begin():
        ids = list(s.scalars(select(OutboxRow.id).order_by(OutboxRow.id)))
        for n, row_id in enumerate(ids):  # one row a day, every third one accepted
            values: dict[str, object] = {"created_at": base + timedelta(days=n)}
            if n % 3 == 0:
                values["state"] = DeliveryState.ACCEPTED
            s.execute(update(OutboxRow).where(OutboxRow.id == row_id).values(**values))
    with Session(api.jokko.engine) as s:
        everything = list(s.scalars(select(OutboxRow).order_by(OutboxRow.id)))
    member = everything[0].member_id
    since, until = base + timedelta(days=2), base + timedelta(days=7)

    def listed(client: str, **params: str) -> list[str]:
        with api.client(client) as c:
            r = c.get("/v1/deliveries", params={**params, "limit": "500"})
        assert r.status_code == 200, r.text
        return [d["message_id"] for d in r.json()["items"]]

    def expected(keep: Callable[[OutboxRow], bool]) -> list[str]:
        return [r.message_id for r in everything if keep(r)]

    assert listed("operator", state="accepted") == expected(lambda r: r.state == "accepted")
    assert listed("operator", state="pending") == expected(lambda r: r.state == "pending")
    assert listed("operator", member_id=member) == expected(lambda r: r.member_id == member)
    assert listed("operator", since=since.isoformat(), until=until.isoformat()) == expected(
        lambda r: since <= r.created_at < until
    )
    assert listed("css", state="accepted", member_id=member, since=since.isoformat()) == expected(
        lambda r: (
            r.institution == "css"
            and r.state == "accepted"
            and r.member_id == member
            and r.created_at >= since
        )
    )
    assert 0 < len(listed("operator", state="accepted")) < len(everything)
    assert listed("operator", member_id="MSNAS-NOBODY") == []
    with api.client("operator") as op:
        assert op.get("/v1/deliveries", params={"state": "lost"}).status_code == 422
        assert op.get("/v1/deliveries", params={"since": "last tuesday"}).status_code == 422


# --------------------------------------------------------------------------- metrics


def events_total(api: Api, outcome: str) -> float:
    text = httpx.get(f"{api.url}/metrics").text
    m = re.search(rf'^jokko_api_events_total\{{outcome="{outcome}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_events_in_metric_counts_every_accepted_event_once(api: Api) -> None:
    single = example("contribution.paid")
    bad = {**example("contribution.paid"), "payload": {"amount": 1.5}}
    csv = (GOLDEN / "csv" / "adhesions.csv").read_bytes()
    cotisation = json.loads((GOLDEN / "webhook" / "cotisation.json").read_bytes())
    with api.client("msnas") as c:
        assert (
            c.post("/v1/events", json=single, headers={"Idempotency-Key": "m"}).status_code == 202
        )
        assert (
            c.post("/v1/events", json=single, headers={"Idempotency-Key": "m"}).status_code == 202
        )
        assert events_total(api, "accepted") == 1, "a replayed answer is not a second event"
        assert c.post("/v1/events", json=bad).status_code == 422
        batch = c.post(
            "/v1/events/batch", json=[example("claim.submitted"), bad, example("contribution.paid")]
        )
        assert batch.status_code == 202
        assert events_total(api, "accepted") == 3
        assert c.post("/v1/msnas/webhook", json=cotisation).json()["accepted"] == 1
        assert c.post("/v1/msnas/csv/adhesions", content=csv).json()["accepted"] == 3
    assert events_total(api, "accepted") == 7 == len(on_topic(api))
    assert events_total(api, "invalid") == 2


# --------------------------------------------------------------------------- personal data


def test_no_name_nin_or_phone_in_any_error_body_or_log_line(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first, last, nin, phone = "Mariètou", "Ndiongue", "2751198804321", "+221771234567"
    enrolled = example("member.enrolled")
    payload = dict(enrolled["payload"])  # type: ignore[call-overload]
    identity = {
        **payload["identity"],
        "given_names": first,
        "family_name": last,
        "nin": nin,
        "phone": phone,
    }
    # real-looking values: in the first event what is wrong is the region, not them
    wrong_region = {**enrolled, "payload": {**payload, "identity": identity, "region": "SN-XX"}}
    malformed = {
        **enrolled,
        "event_id": str(uuid.uuid4()),
        "payload": {
            **payload,
            "identity": {**identity, "birth_date": 12, "nin": nin + "9", "phone": phone + "00"},
        },
    }
    record = json.loads((GOLDEN / "webhook" / "adhesion.json").read_bytes())
    webhook = {**record, "prenom": first, "nom": last, "nin": nin + "9", "telephone": phone + "00"}
    csv_line = (GOLDEN / "csv" / "adhesions.csv").read_text(encoding="utf-8").splitlines()
    bad_row = (
        csv_line[1]
        .replace("Astou", first)
        .replace(",Kâ,", f",{last},")
        .replace("2230199200190", nin + "9")
        .replace("70 666 77 88", phone + "00")
    )
    with api.client("msnas") as c:
        answers = [
            c.post("/v1/events", json=wrong_region),
            c.post("/v1/events", json=malformed),
            c.post("/v1/events/batch", json=[wrong_region, malformed]),
            c.post(
                "/v1/events",
                content=json.dumps(wrong_region)[:-3].encode(),  # cut short
                headers={"content-type": "application/json"},
            ),
            c.post("/v1/msnas/webhook", json=[webhook]),
            c.post("/v1/msnas/csv/adhesions", content=f"{csv_line[0]}\n{bad_row}\n".encode()),
        ]
    assert [a.status_code for a in answers] == [422, 422, 422, 422, 202, 202]
    assert all(a.json()["errors"] for a in answers if a.status_code == 202)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "the API logged something to look at"
    seen = "\n".join(a.text for a in answers) + "\n" + logged
    digits = re.sub(r"\D", "", seen)
    for value in (first, last, nin, phone, phone.lstrip("+"), "771234567"):
        assert value not in seen, value
        assert json.dumps(value)[1:-1] not in seen, value  # nor JSON-escaped
    assert nin not in digits
    assert "771234567" not in digits
    assert on_topic(api) == []


# --------------------------------------------------------------------------- rate limits


def test_jokko_api_serves_with_the_configured_rate_limit(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = jokko_settings(api_port=free_port(), api_rate_per_s=0.01, api_rate_burst=3)
    assert settings_env(settings)["JOKKO_API_RATE_BURST"] == "3"
    proc, url = start_jokko_api(settings, tmp_path / "api.log")
    try:
        form = {"grant_type": "client_credentials"}
        answers = [
            httpx.post(f"{url}/v1/oauth/token", data=form, auth=("msnas-x", "wrong"))
            for _ in range(4)
        ]
        other = httpx.post(f"{url}/v1/oauth/token", data=form, auth=("another", "wrong"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert [a.status_code for a in answers] == [401, 401, 401, 429], "a burst of 3, then refused"
    assert int(answers[3].headers["Retry-After"]) >= 1
    assert answers[3].headers["content-type"] == PROBLEM
    assert other.status_code == 401, "the bucket is per client"
