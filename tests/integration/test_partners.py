"""Delivery to the fake institutions over the three modes — HTTP push (CMU, CSS), file exchange
(IPRES), the institution's own Kafka topics — with the real router, broker and PostgreSQL.

Breaks it on purpose: CSS flapping (30% 503, 1 s latency), CSS down then back, rejected
members, a partner that answers twice or about messages Jokko never sent.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.broker import idempotent_producer
from router.canonical import publish_events
from router.channels import tls_context
from router.relay import Relay
from router.signing import Verifier
from router.store import AckAnomalyRow, DeadLetterRow, DeliveryState, OutboxRow
from schemas import CanonicalEvent
from services import keyring
from services.bootstrap import Jokko, bootstrap
from services.settings import Settings
from tests.factories import contributions, enrolments
from tests.fakes.base import CLIENT_GONE, HttpFake
from tests.fakes.cmu import FakeCMU
from tests.fakes.css import FakeCSS
from tests.fakes.faults import Faults
from tests.fakes.ipres import FakeIPRES
from tests.fakes.kafka_partner import KafkaPartner
from tests.fakes.server import serve
from tests.integration.test_router_flow import route_until_idle
from tests.tls import TestPki, make_pki

pytestmark = pytest.mark.integration

SECRETS = {
    inst: f"{inst.value}-shared-secret-for-tests-0123456789".encode() for inst in Institution
}
FINAL = {DeliveryState.ACCEPTED, DeliveryState.REJECTED, DeliveryState.DEAD}
DELIVERED = {DeliveryState.SENT, DeliveryState.ACCEPTED, DeliveryState.REJECTED}


@dataclass
class Partners:
    cmu: FakeCMU
    css: FakeCSS
    ipres: FakeIPRES
    settings: dict[str, object]
    pki: TestPki


@pytest.fixture
def partners(tmp_path: Path) -> Iterator[Partners]:
    """CMU and CSS over mutual TLS (a test CA, Jokko's client certificate required); CMU
    verifies Jokko's Ed25519 signature with its JWKS alone (the default), CSS the HMAC too
    (``signature: both``), IPRES by files, each with its detached signature."""
    # The keyring every test's Jokko uses (the default file): a store made by one test process
    # (an API of the console test) and the relay these settings start must share it.
    keyring_file: Path = Settings.model_fields["keyring_file"].default
    keyring.load(keyring_file, create=True)
    jwks = keyring.message_keys(keyring_file, create=True).jwks()  # the public document only
    cmu = FakeCMU(None, Faults(seed=1), jwks=jwks)
    css = FakeCSS(SECRETS[Institution.CSS], Faults(seed=2), jwks=jwks)
    ipres = FakeIPRES(tmp_path / "ipres-in", tmp_path / "ipres-acks", Faults(seed=3), jwks=jwks)
    pki = make_pki(tmp_path / "pki")
    with ExitStack() as stack:
        cmu_url = stack.enter_context(serve(cmu.app, tls=pki.server_tls()))
        css_url = stack.enter_context(serve(css.app, tls=pki.server_tls()))
        stack.enter_context(ipres)
        yield Partners(
            cmu,
            css,
            ipres,
            {
                "cmu": {"mode": "http", "url": f"{cmu_url}/fhir", **pki.partner_settings()},
                "css": {
                    "mode": "http",
                    "url": f"{css_url}/css/v1/documents",
                    "signature": "both",
                    "secret": SECRETS[Institution.CSS].decode(),
                    "timeout_s": 5,
                    "concurrency": 8,
                    **pki.partner_settings(),
                },
                "ipres": {"mode": "file", "outbox_dir": ipres.inbox, "ack_dir": ipres.acks},
            },
            pki,
        )


@dataclass
class Run:
    app: Jokko
    relay: Relay
    stop: threading.Event
    thread: threading.Thread

    def rows(self) -> list[OutboxRow]:
        with Session(self.app.engine) as s:
            return list(s.scalars(select(OutboxRow).order_by(OutboxRow.id)))

    def unfinished(self, institution: Institution | None = None) -> int:
        return sum(
            1
            for r in self.rows()
            if r.state not in FINAL and (institution is None or r.institution == institution)
        )

    def wait(self, what: Callable[[], bool], timeout_s: float, label: str) -> float:
        start = time.monotonic()
        while not what():
            if time.monotonic() - start > timeout_s:
                states = Counter((r.institution, r.state) for r in self.rows())
                raise AssertionError(f"timed out waiting for {label}: {states}")
            time.sleep(0.1)
        return time.monotonic() - start


@pytest.fixture
def start(
    jokko_settings: Callable[..., Settings], partners: Partners
) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def _start(events: list[CanonicalEvent], **overrides: object) -> Run:
        settings = jokko_settings(
            **{
                **partners.settings,
                "delivery_backoff_initial_s": 0.2,
                "delivery_backoff_max_s": 2.0,
                "delivery_breaker_reset_s": 0.5,
                "relay_batch_size": 50,
                **overrides,
            }
        )
        app = bootstrap(settings)
        producer = idempotent_producer(settings.kafka_bootstrap)
        try:
            publish_events(producer, app.topics.canonical, events, vault=app.vault)
        finally:
            producer.close()
        router = app.router()
        try:
            assert route_until_idle(router, len(events)) == len(events)
        finally:
            router.close()
        relay = app.relay()
        stop = threading.Event()
        thread = threading.Thread(target=relay.run, args=(stop,))
        thread.start()
        run = Run(app, relay, stop, thread)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        run.stop.set()
        run.thread.join(30)
        run.app.engine.dispose()


def activity(members: int, months: int) -> list[CanonicalEvent]:
    seed = uuid.uuid4().hex[:6]
    return [*enrolments(members), *contributions(members, months, seed=seed)]


def in_member_order(run: Run, received_ids: list[str], institution: Institution) -> None:
    seq = {r.message_id: (r.member_id, r.member_seq) for r in run.rows()}
    last: dict[str, int] = defaultdict(int)
    for mid in received_ids:
        member, n = seq[mid]
        assert n > last[member], f"{institution} got {member} #{n} after #{last[member]}"
        last[member] = n


def test_three_modes_deliver_and_every_message_ends_accepted_or_rejected(
    start: Callable[..., Run], partners: Partners
) -> None:
    partners.css.faults.reject_members = {"MSNAS-TH-000002"}
    partners.ipres.faults.reject_members = {"MSNAS-TH-000003"}
    run = start(activity(members=6, months=3))
    run.wait(lambda: run.unfinished() == 0, 90, "every delivery to end")

    rows = run.rows()
    by_inst = defaultdict(list)
    for r in rows:
        by_inst[r.institution].append(r)
    assert set(by_inst) == {"cmu", "css", "ipres"}
    for r in rows:
        rejected = (r.institution, r.member_id) in {
            ("css", "MSNAS-TH-000002"),
            ("ipres", "MSNAS-TH-000003"),
        }
        assert r.state == (DeliveryState.REJECTED if rejected else DeliveryState.ACCEPTED), r
        if rejected:
            assert r.reason_code == "R042", "the institution's reason reaches the delivery"
            assert r.reason_text
        else:
            assert r.institution_ref, "the institution's own reference is kept"
    # what each institution holds is exactly what Jokko says it delivered
    for inst, fake in (("cmu", partners.cmu), ("css", partners.css), ("ipres", partners.ipres)):
        assert {m.message_id for m in fake.received} == {r.message_id for r in by_inst[inst]}
    assert {r.batch_ref for r in by_inst["ipres"]} <= {f.file_id for f in partners.ipres.files}
    tally = Counter((r.institution, str(r.state)) for r in rows)
    print(f"three modes: {dict(sorted(tally.items()))}")


def tally(run: Run, fakes: dict[str, HttpFake]) -> dict[str, dict[str, int | float]]:
    """Per institution: messages, delivered (reached it: sent, accepted or rejected),
    accepted, rejected, dead; and for the HTTP ones the requests their fake counted."""
    out: dict[str, dict[str, int | float]] = {}
    for inst in Institution:
        rows = [r for r in run.rows() if r.institution == inst]
        states = Counter(r.state for r in rows)
        line: dict[str, int | float] = {
            "messages": len(rows),
            "delivered": sum(states[s] for s in DELIVERED),
            "accepted": states[DeliveryState.ACCEPTED],
            "rejected": states[DeliveryState.REJECTED],
            "dead": states[DeliveryState.DEAD],
        }
        fake = fakes.get(inst.value)
        if fake is not None and rows:
            line["requests"] = fake.requests.total
            line["requests_per_message"] = round(fake.requests.total / len(rows), 2)
        out[inst.value] = line
    return out


def test_css_flapping_30pc_with_1s_latency_is_isolated_and_bounded(
    start: Callable[..., Run], partners: Partners, tmp_path: Path
) -> None:
    max_attempts = 6
    partners.css.faults.error_rate = 0.3
    partners.css.faults.latency_s = 1.0
    # 8 members x 3 events: 24 CSS messages of ~1.4 one-second tries each, 8 members at a
    # time; about 20 s here, far from the 300 s timeout even on a loaded machine.
    run = start(activity(members=8, months=2), delivery_max_attempts=max_attempts)
    others = run.wait(
        lambda: run.unfinished(Institution.CMU) == 0 and run.unfinished(Institution.IPRES) == 0,
        60,
        "CMU and IPRES",
    )
    css_pending_when_others_done = run.unfinished(Institution.CSS)
    total = run.wait(lambda: run.unfinished() == 0, 200, "CSS to finish") + others
    css_rows = [r for r in run.rows() if r.institution == "css"]
    states = Counter(r.state for r in css_rows)
    assert set(states) <= {DeliveryState.ACCEPTED, DeliveryState.DEAD}
    assert css_pending_when_others_done > 0, "CSS was still busy when the others had finished"

    # nothing lost: accepted and held by CSS, or dead with its dead letter
    held = partners.css.recorder.accepted_ids()
    with Session(run.app.engine) as s:
        dead_letters = {d.message_id: d for d in s.scalars(select(DeadLetterRow))}
    for r in css_rows:
        if r.state == DeliveryState.ACCEPTED:
            assert r.message_id in held, r
        else:
            assert dead_letters[r.message_id].reason == "retries_exhausted", r
    assert held == {r.message_id for r in css_rows if r.state == DeliveryState.ACCEPTED}

    # No storm. Every request CSS saw is either the one success of its message or a failure
    # (503, or 499 if a 5 s client timeout ever fired): no accepted message was sent again.
    counts = partners.css.requests
    successes = counts.by_status[200]
    failures = counts.total - successes
    assert successes == len(held), "an accepted message was sent again"
    assert failures == counts.by_status[503] + counts.by_status[CLIENT_GONE] + counts.dropped
    # Jokko knows of every request: each was a scheduled attempt counted against its row's
    # budget (a channel retrying on its own, or two workers sending one row, would break it).
    assert run.relay.workers[Institution.CSS].channel.requests == counts.total  # type: ignore[attr-defined]
    assert counts.total <= sum(r.attempts for r in css_rows) <= len(css_rows) * max_attempts
    # So requests = messages accepted + failures, and only a failure earns another request.
    # With 30% 503s a message needs 1/(1-0.3) = 1.43 tries on average: 0.43 failures each (sd
    # 0.78; over 24 messages ~10, sd 3.8). Hence requests <= 2 x messages, 3.6 sd of margin;
    # the budget alone (6 x messages) would let through a channel that re-sends on its own or
    # tries each message several times per attempt. While the breaker is open nothing is
    # sent, and its probes are ordinary attempts of one message, counted above. The draws are
    # seeded, so the count barely moves from run to run.
    assert failures <= len(css_rows), f"{failures} failures for {len(css_rows)} messages"
    in_member_order(run, [m.message_id for m in partners.css.received], Institution.CSS)

    report = {
        "institutions": tally(run, {"cmu": partners.cmu, "css": partners.css}),
        "css_requests": {
            "total": counts.total,
            "by_status": {str(k): v for k, v in sorted(counts.by_status.items())},
            "dropped": counts.dropped,
            "per_message": round(counts.total / len(css_rows), 2),
        },
        "seconds": {"cmu_and_ipres_done": round(others, 1), "all_done": round(total, 1)},
    }
    text = json.dumps(report, indent=2)
    (tmp_path / "flapping-tally.json").write_text(text + "\n")
    print(f"CSS flapping tally ({tmp_path / 'flapping-tally.json'}):\n{text}")


def test_css_down_then_back_drains_its_backlog_in_member_order(
    start: Callable[..., Run], partners: Partners
) -> None:
    partners.css.faults.down = True
    run = start(activity(members=6, months=4), delivery_breaker_failures=3)
    run.wait(
        lambda: run.unfinished(Institution.CMU) == 0 and run.unfinished(Institution.IPRES) == 0,
        60,
        "CMU and IPRES while CSS is down",
    )
    time.sleep(2)
    css_rows = [r for r in run.rows() if r.institution == "css"]
    assert all(r.state == DeliveryState.PENDING for r in css_rows)
    while_down = partners.css.requests.total
    assert while_down < len(css_rows), "a dead partner is probed, not hammered"

    partners.css.faults.down = False
    run.wait(lambda: run.unfinished() == 0, 60, "the CSS backlog")
    assert all(r.state == DeliveryState.ACCEPTED for r in run.rows())
    in_member_order(run, [m.message_id for m in partners.css.received], Institution.CSS)
    print(f"CSS down: {while_down} requests for {len(css_rows)} waiting messages")


def test_duplicate_and_unknown_acks_are_harmless_and_recorded(
    start: Callable[..., Run], partners: Partners
) -> None:
    partners.ipres.faults.duplicate_acks = True
    run = start(activity(members=4, months=2))
    run.wait(lambda: run.unfinished() == 0, 60, "every delivery to end")
    ipres = [r for r in run.rows() if r.institution == "ipres"]
    assert all(r.state == DeliveryState.ACCEPTED for r in ipres)
    # an ack file about a message Jokko never sent
    from adapters.base import Ack, AckStatus
    from adapters.ipres import build_ack_file

    stranger = str(uuid.uuid4())
    ack = build_ack_file(
        [Ack(stranger, Institution.IPRES, AckStatus.ACCEPTED, institution_ref="IP-X")],
        file_id="ACKSTRANGER",
        declaration_file_id="NOTOURS",
        created=__import__("datetime").date.today(),
    )
    (partners.ipres.acks / "stranger.ack").write_bytes(ack)

    def anomalies() -> list[AckAnomalyRow]:
        with Session(run.app.engine) as s:
            return list(s.scalars(select(AckAnomalyRow)))

    run.wait(lambda: any(a.message_id == stranger for a in anomalies()), 30, "the anomaly")
    assert [a.kind for a in anomalies()] == ["unknown_message"]
    assert all(r.state == DeliveryState.ACCEPTED for r in run.rows() if r.institution == "ipres")


def test_kafka_mode_acks_come_back_on_the_ack_topic(
    start: Callable[..., Run], partners: Partners, tmp_path: Path
) -> None:
    """CMU reads jokko.out.cmu.v1 and answers (twice each) on jokko.acks.cmu.v1."""
    partners.cmu.faults.reject_members = {"MSNAS-TH-000001"}
    # The bridge from CMU's topic consumer to its backend is inside CMU: it signs with a
    # secret of CMU's own, not with Jokko's key (Jokko's signature is on the topic's record).
    partners.cmu.verifier = Verifier([SECRETS[Institution.CMU]])
    key_file = tmp_path / "cmu-topic-key.json"
    keyring.topic_key(key_file, Institution.CMU.value)
    run = start(activity(members=5, months=2), cmu={"mode": "kafka", "topic_key_file": key_file})
    url = partners.settings["cmu"]["url"]  # type: ignore[index]
    with KafkaPartner(
        run.app.settings.kafka_bootstrap,
        run.app.topics,
        Institution.CMU,
        str(url),
        SECRETS[Institution.CMU],
        duplicate_acks=True,
        tls=tls_context(partners.pki.ca, partners.pki.client.cert, partners.pki.client.key),
        topic_key=keyring.load_topic_key(key_file),
    ) as partner:
        run.wait(lambda: run.unfinished() == 0, 90, "every CMU ack")
    cmu = [r for r in run.rows() if r.institution == "cmu"]
    assert partner.consumed >= len(cmu)
    for r in cmu:
        expected = (
            DeliveryState.REJECTED if r.member_id == "MSNAS-TH-000001" else DeliveryState.ACCEPTED
        )
        assert r.state == expected
        assert r.sent_at is not None
        assert r.acked_at is not None
    with Session(run.app.engine) as s:
        assert list(s.scalars(select(AckAnomalyRow))) == [], "a duplicate ack is no anomaly"
