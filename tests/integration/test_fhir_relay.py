"""A demo month for a few hundred members delivered to a real FHIR server (HAPI FHIR JPA, R4B)
through the real router, relay and HTTP channel (issue 29): every CMU transaction accepted,
a re-delivery of everything creates no resource, and members' Coverage and Claims are found on
the server by the searches CMU would run.

CSS and IPRES stay in mode kafka (topics of the test's own): only CMU's deliveries are checked.
The server is shared by the session: the month's members get serials (``77....``) that no
other test uses, and resources are counted just before and just after the re-delivery.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.broker import idempotent_producer
from router.canonical import publish_events
from router.relay import Relay
from router.store import DeliveryState, OutboxRow
from schemas import CanonicalEvent, parse_event
from services import keyring
from services.bootstrap import Jokko, bootstrap
from services.demo_data import generate_month
from services.settings import Settings
from tests.infra import FhirServer
from tests.integration.test_fhir_server import MEMBER_ID, RESOURCE_TYPES
from tests.integration.test_router_flow import route_until_idle

pytestmark = [
    pytest.mark.integration,
    # The first test here may wait for the server's start (the session fixture).
    pytest.mark.timeout(900),
]

MEMBERS = 200
PERIOD = "2025-11"
FINAL = {DeliveryState.ACCEPTED, DeliveryState.REJECTED, DeliveryState.DEAD}


def month_events() -> list[CanonicalEvent]:
    """The demo month, its members renumbered ``MSNAS-XX-77nnnn`` (apart from the examples)."""
    text = json.dumps(generate_month(MEMBERS, PERIOD).events)
    text = re.sub(r"(MSNAS-[A-Z]{2}-)00(\d{4})", r"\g<1>77\2", text)
    return [parse_event(e) for e in json.loads(text)]


@dataclass
class Run:
    app: Jokko
    settings: Settings
    relay: Relay | None = None
    stop: threading.Event | None = None
    thread: threading.Thread | None = None

    def cmu_rows(self) -> list[OutboxRow]:
        with Session(self.app.engine) as s:
            return list(
                s.scalars(
                    select(OutboxRow)
                    .where(OutboxRow.institution == Institution.CMU.value)
                    .order_by(OutboxRow.id)
                )
            )

    def start_relay(self) -> None:
        self.relay = self.app.relay()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.relay.run, args=(self.stop,))
        self.thread.start()

    def stop_relay(self) -> None:
        if self.stop is not None and self.thread is not None:
            self.stop.set()
            self.thread.join(30)
            self.stop = self.thread = self.relay = None

    def wait_cmu_final(self, timeout_s: float) -> float:
        start = time.monotonic()
        while any(r.state not in FINAL for r in self.cmu_rows()):
            if time.monotonic() - start > timeout_s:
                states = Counter(r.state for r in self.cmu_rows())
                raise AssertionError(f"CMU deliveries not over after {timeout_s} s: {states}")
            time.sleep(0.2)
        return time.monotonic() - start


@dataclass
class Fhir:
    client: httpx.Client

    def get(self, query: str) -> dict[str, object]:
        r = self.client.get(query)
        assert r.status_code == 200, (query, r.status_code, r.text[:500])
        body: dict[str, object] = r.json()
        return body

    def total(self, query: str) -> int:
        sep = "&" if "?" in query else "?"
        total = self.get(f"{query}{sep}_summary=count")["total"]
        assert isinstance(total, int)
        return total

    def counts(self) -> dict[str, int]:
        return {t: self.total(t) for t in RESOURCE_TYPES}

    def patient_id(self, member: str) -> str:
        bundle = self.get(f"Patient?identifier={MEMBER_ID}|{member}")
        entries = bundle.get("entry")
        assert isinstance(entries, list), (member, bundle)
        assert len(entries) == 1, (member, bundle)
        pid: str = entries[0]["resource"]["id"]
        return pid


@pytest.fixture
def run(jokko_settings: Callable[..., Settings], fhir_server: FhirServer) -> Iterator[Run]:
    # The relay signs CMU's pushes with Jokko's message key (HAPI ignores the signature).
    keyring_file = Settings.model_fields["keyring_file"].default
    keyring.load(keyring_file, create=True)
    keyring.message_keys(keyring_file, create=True)
    settings = jokko_settings(
        cmu={
            "mode": "http",
            "url": fhir_server.base_url,
            "allow_plain_http": True,
            "batch_size": 1,  # HAPI reads transactions, not Jokko's batch envelope
            "timeout_s": 60,
            "concurrency": 8,
        },
        delivery_backoff_initial_s=0.2,
        delivery_backoff_max_s=2.0,
        delivery_breaker_reset_s=0.5,
        relay_batch_size=100,
    )
    r = Run(bootstrap(settings), settings)
    try:
        yield r
    finally:
        r.stop_relay()
        r.app.engine.dispose()


def test_a_demo_month_reaches_the_fhir_server_once(run: Run, fhir_server: FhirServer) -> None:
    events = month_events()
    t0 = time.monotonic()
    producer = idempotent_producer(run.settings.kafka_bootstrap)
    try:
        publish_events(producer, run.app.topics.canonical, events, vault=run.app.vault)
    finally:
        producer.close()
    router = run.app.router()
    try:
        assert route_until_idle(router, len(events), timeout_s=120) == len(events)
    finally:
        router.close()
    routed_s = time.monotonic() - t0

    run.start_relay()
    first_s = run.wait_cmu_final(300)
    rows = run.cmu_rows()
    refused = [
        f"{r.member_id} {r.kind} {r.state} {r.reason_code}: {r.reason_text or r.last_error}"
        for r in rows
        if r.state != DeliveryState.ACCEPTED
    ]
    print("\nrefused by the FHIR server:", *refused, sep="\n  ")
    assert refused == []
    assert len(rows) > MEMBERS

    with httpx.Client(base_url=fhir_server.base_url, timeout=120) as client:
        fhir = Fhir(client)
        before = fhir.counts()

        # Re-deliver every CMU message once more, through the same relay and channel.
        run.stop_relay()
        with Session(run.app.engine) as s, s.begin():
            s.execute(
                update(OutboxRow)
                .where(OutboxRow.institution == Institution.CMU.value)
                .values(state=DeliveryState.PENDING, next_attempt_at=None, attempts=0)
            )
        run.start_relay()
        second_s = run.wait_cmu_final(300)
        again = run.cmu_rows()
        assert Counter(r.state for r in again) == {DeliveryState.ACCEPTED: len(rows)}
        after = fhir.counts()
        assert after == before, "a re-delivery created resources"

        # A member's resources, found as CMU would find them.
        # Members with a claim of their own (a dependent's claim is on the dependent's Patient).
        claimants = sorted(
            {
                e.member_id
                for e in events
                if e.event_type == "claim.submitted"
                and e.payload.model_dump().get("beneficiary_id") == e.member_id
            }
        )
        assert len(claimants) >= 3, "the month has members' own claims"
        for member in claimants[:3]:
            pid = fhir.patient_id(member)
            assert fhir.total(f"Coverage?beneficiary=Patient/{pid}") == 1, member
            assert fhir.total(f"Claim?patient=Patient/{pid}") >= 1, member

    event_types = {str(e.event_id): e.event_type for e in events}
    kinds = Counter(event_types[r.event_id] for r in rows)
    print(
        f"demo month on HAPI FHIR: {len(events)} events, {len(rows)} CMU transactions "
        f"{dict(sorted(kinds.items()))}, all accepted twice; routed in {routed_s:.1f} s, "
        f"delivered in {first_s:.1f} s, re-delivered in {second_s:.1f} s; "
        f"server totals {before}"
    )
