"""Issue 17 through the API, on the real broker and PostgreSQL: a resubmission of a known event
id with other content is answered 409 (not 202), one the API cannot know about is caught by
the router as a dead letter, and the first event's messages to every institution stay as they
were. A body not declared as JSON is answered 415 and never parsed."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.broker import idempotent_producer
from router.canonical import publish_events
from router.processing import CONFLICTING_DUPLICATE
from router.relay import Relay
from router.store import SubmittedEventRow
from schemas import parse_event
from services.api.auth import Authority, Scope
from tests.integration.test_api import PROBLEM, Api, api, example, on_topic
from tests.integration.test_relay import read_outbound
from tests.integration.test_router_flow import route_until_idle

pytestmark = pytest.mark.integration

__all__ = ["api"]  # the fixture, shared with test_api.py


def doubled(event: dict[str, Any]) -> dict[str, Any]:
    payload = {
        **event["payload"],
        "amount": 21000,
        "allocation": {"health": 14000, "family": 3000, "old_age": 4000},
    }
    return {**event, "payload": payload}


def route(api: Api, expected: int) -> None:
    router = api.jokko.router()
    try:
        assert route_until_idle(router, expected) == expected
    finally:
        router.close()


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # as exposed
    match = re.search(rf"^{name}{{{re.escape(wanted)}}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_conflicting_resubmission_is_refused_or_dead_lettered_never_silent(api: Api) -> None:
    first, fresh = example("contribution.paid"), example("contribution.paid")
    fresh["payload"] = {**fresh["payload"], "payment_reference": "T_FRESH00001"}  # type: ignore[dict-item]
    other = doubled(first)
    eid = str(first["event_id"])
    with api.client("msnas") as c:
        accepted = c.post("/v1/events", json=first, headers={"Idempotency-Key": "k-first"})
        assert accepted.status_code == 202, accepted.text
        # Submitted earlier through this API, not routed yet: known all the same.
        refused = c.post("/v1/events", json=other, headers={"Idempotency-Key": "k-other"})
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"] == PROBLEM
        problem = refused.json()
        assert problem["type"].endswith("/conflicting-event")
        assert eid in problem["detail"]
        assert "21000" not in refused.text
        again = c.post("/v1/events", json=other, headers={"Idempotency-Key": "k-other"})
        assert again.status_code == 409, "a refusal is not stored as the key's answer"
        same = c.post("/v1/events", json=first)
        assert same.status_code == 202, "the same content again is a harmless retry"

        with Session(api.jokko.engine) as s:
            assert len(s.scalars(select(SubmittedEventRow)).all()) == 1
        route(api, 2)
        with Session(api.jokko.engine) as s:
            assert s.scalars(select(SubmittedEventRow)).all() == [], "pruned once routed"
        # Routed: the inbox knows it.
        assert c.post("/v1/events", json=other).status_code == 409
        batch = c.post("/v1/events/batch", json=[other, fresh])
        assert batch.status_code == 202, batch.text
        assert (batch.json()["accepted"], batch.json()["conflicts"]) == (1, 1)
        items = batch.json()["items"]
        assert [i["status"] for i in items] == ["conflict", "accepted"]
        assert items[0]["errors"][0]["code"] == CONFLICTING_DUPLICATE
        only = c.post("/v1/events/batch", json=[other])
        assert only.status_code == 409
        assert only.json()["items"][0]["status"] == "conflict"

    # A copy the API could not know about (another replica racing, its database away) reaches
    # the canonical topic: the router dead-letters it, the first one stands.
    producer = idempotent_producer(api.jokko.settings.kafka_bootstrap)
    publish_events(
        producer, api.jokko.topics.canonical, [parse_event(other)], vault=api.jokko.vault
    )
    route(api, 2)  # the fresh event and the conflicting copy
    with api.client("operator") as op:
        letters = op.get("/v1/dead-letters").json()["items"]
        trail = op.get(f"/v1/events/{eid}").json()["trail"]
    assert [(d["reason"], d["event_id"]) for d in letters] == [(CONFLICTING_DUPLICATE, eid)]
    assert "payload.amount" in letters[0]["detail"]
    assert [s["stage"] for s in trail].count("conflict") == 1
    # The operator console shows the letter and the trail step.
    secret = Authority(api.jokko.engine).add_client(
        "console-op", [s.value for s in (Scope.EVENTS_READ, Scope.DEAD_LETTERS)]
    )
    with httpx.Client(base_url=api.url, timeout=30) as console:
        login = {"client_id": "console-op", "client_secret": secret}
        assert console.post("/console/login", data=login).status_code == 303
        listed = console.get("/console/dead-letters").text
        shown = console.get(f"/console/events/{eid}").text
    assert CONFLICTING_DUPLICATE in listed
    assert "payload.amount" in listed
    assert re.search(r'class="stage state-conflict">conflict<', shown)
    metrics = httpx.get(f"{api.url}/metrics").text
    assert (
        metric(
            metrics,
            "jokko_dead_letters_open_by_reason",
            source="canonical",
            reason=CONFLICTING_DUPLICATE,
        )
        == 1
    )
    assert metric(metrics, "jokko_api_events_total", outcome="conflict") == 5

    topic = on_topic(api)
    amounts = [(e["event_id"], e["payload"]["amount"]) for e in topic]  # type: ignore[index]
    assert sorted(amounts, key=str) == sorted(
        [(eid, 10500), (eid, 10500), (str(fresh["event_id"]), 10500), (eid, 21000)], key=str
    ), "published: the first twice (a retry), the fresh one, the injected copy; no refusal"

    # Every institution gets the first content, once, and nothing of the other.
    relay = Relay(
        api.jokko.engine, producer, api.jokko.topics, batch_size=100, vault=api.jokko.vault
    )
    try:
        while relay.relay_once():
            pass
    finally:
        relay.close()
    got = read_outbound(api.jokko.settings.kafka_bootstrap, api.jokko.topics, 6)
    mine = [h for h in got if h["event_id"] == eid]
    assert sorted(h["topic"].rsplit(".", 2)[-2] for h in mine) == ["cmu", "css", "ipres"]
    assert all("21000" not in h["value"] and "21 000" not in h["value"] for h in mine)
    assert len(got) == 6


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/plain"}, {}, {"content-type": "application/x-www-form-urlencoded"}],
    ids=["text", "undeclared", "form"],
)
def test_a_body_not_declared_json_is_415_and_not_parsed(api: Api, headers: dict[str, str]) -> None:
    body = json.dumps(example("contribution.paid")).encode()
    with api.client("msnas") as c:
        answers = [
            c.post("/v1/events", content=body, headers=headers),
            c.post("/v1/events/batch", content=b"[" + body + b"]", headers=headers),
            c.post("/v1/msnas/webhook", content=b"{}", headers=headers),
        ]
        declared = c.post(
            "/v1/events", content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
    assert [a.status_code for a in answers] == [415, 415, 415]
    assert all(a.headers["content-type"] == PROBLEM for a in answers)
    assert declared.status_code == 202, "JSON with a charset parameter is JSON"
    assert len(on_topic(api)) == 1
