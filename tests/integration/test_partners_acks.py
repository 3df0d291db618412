"""Acknowledgements that come back in odd ways, against the fake institutions: CMU's claim
decision inside its HTTP answer (and given twice), an ack for a message Jokko had given up on,
an ack contradicting the first one, and a dead letter brought back by replay.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime

import pytest
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from adapters.base import Ack, AckStatus, Institution
from adapters.css import parse_ack as parse_css_ack
from adapters.ipres import build_ack_file
from router.acks import DecisionsUnpublished, apply_acks
from router.canonical import decode_record
from router.delivery import DeliveryWorker
from router.envelope import is_sealed
from router.errors import BrokerUnavailable
from router.processing import Processor, RawRecord
from router.registry import outbound_adapters
from router.replay import replay
from router.store import AckAnomalyRow, DeadLetterRow, DeliveryState, OutboxRow
from schemas import (
    CanonicalEvent,
    ClaimAdjudicated,
    ClaimAdjudicatedPayload,
    ClaimSubmitted,
    dump_event,
)
from schemas.examples import load_examples
from schemas.payloads import ClaimOutcome
from services.bootstrap import bootstrap
from services.settings import Settings
from tests.integration import test_partners
from tests.integration.test_partners import Partners, Run, activity

pytestmark = pytest.mark.integration

ADJUDICATION_NS = uuid.UUID("9c4e2f1a-3b5d-4e6f-8a7b-0c1d2e3f4a5b")
"""router.acks derives decision ids from it; pinned here, as changing it would duplicate
decisions already published."""

partners = test_partners.partners
start = test_partners.start


def canonical_events(run: Run) -> list[CanonicalEvent]:
    """Everything on the canonical topic, from the beginning to its current end."""
    consumer = KafkaConsumer(bootstrap_servers=run.app.settings.kafka_bootstrap)
    try:
        topic = run.app.topics.canonical
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        events: list[CanonicalEvent] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(p) < end[p] for p in parts):
            assert time.monotonic() < deadline, "the canonical topic was not read to its end"
            for records in consumer.poll(timeout_ms=300).values():
                # decisions are sealed like every canonical record: opened, never read in clear
                assert all(is_sealed(r.value) for r in records)
                events += [decode_record(r, run.app.vault) for r in records]
        return events
    finally:
        consumer.close()


def anomalies(run: Run) -> list[AckAnomalyRow]:
    with Session(run.app.engine) as s:
        return list(s.scalars(select(AckAnomalyRow).order_by(AckAnomalyRow.id)))


def rows_of(run: Run, institution: Institution) -> list[OutboxRow]:
    return [r for r in run.rows() if r.institution == institution]


def claims_with_their_members() -> list[CanonicalEvent]:
    examples = load_examples()
    claimants = {e.member_id for e in examples if e.event_type == "claim.submitted"}
    return [
        e
        for e in examples
        if e.member_id in claimants and e.event_type in ("member.enrolled", "claim.submitted")
    ]


@pytest.mark.parametrize("batch_size", [1, 10], ids=["one-per-request", "batched"])
def test_cmu_decision_in_the_http_answer_comes_back_once_on_the_canonical_topic(
    start: Callable[..., Run], partners: Partners, batch_size: int
) -> None:
    cmu = partners.cmu
    cmu.adjudicate_claims = ClaimOutcome.PARTIALLY_APPROVED
    cmu.faults.duplicate_acks = True  # the ClaimResponse twice in each answer
    cmu.decisions_lost = 1  # the first answer to each claim is lost: Jokko asks again
    events = claims_with_their_members()
    claims = {e.event_id: e for e in events if e.event_type == "claim.submitted"}
    assert len(claims) == 3
    cmu_settings = {**partners.settings["cmu"], "batch_size": batch_size}  # type: ignore[dict-item]
    run = start(events, cmu=cmu_settings)
    run.wait(lambda: run.unfinished(Institution.CMU) == 0, 60, "CMU's answers")
    if batch_size > 1:  # the claims went together, their decisions in one batch-response
        assert cmu.requests.total < len(rows_of(run, Institution.CMU))

    cmu_rows = rows_of(run, Institution.CMU)
    assert all(r.state == DeliveryState.ACCEPTED for r in cmu_rows)
    claim_rows = {r.message_id: r for r in cmu_rows if uuid.UUID(r.event_id) in claims}
    resent = Counter(m.message_id for m in cmu.received if m.resent)
    assert {mid: resent[mid] for mid in claim_rows} == dict.fromkeys(claim_rows, 1), (
        "CMU decided every claim once and gave its decision twice"
    )
    assert all(r.attempts == 2 for r in claim_rows.values())
    decided = [e for e in canonical_events(run) if isinstance(e, ClaimAdjudicated)]
    assert len(decided) == len(claims), [str(e.event_id) for e in decided]
    assert {e.correlation_id for e in decided} == set(claims)
    for e in decided:
        claim = claims[e.correlation_id]
        assert e.member_id == claim.member_id
        assert e.payload.claim_id == claim.payload.claim_id
        assert (e.payload.adjudicator, e.payload.outcome) == ("CMU", "partially_approved")
        assert e.payload.reason_codes == ("NOT_COVERED",)
        # the id the ack topic and the API intake would give the same decision
        row = next(r for r in claim_rows.values() if uuid.UUID(r.event_id) == e.correlation_id)
        assert e.event_id == uuid.uuid5(ADJUDICATION_NS, f"cmu:{row.message_id}")

    # The same decision arriving once more by another intake is a duplicate, not an event.
    again = [
        Ack(r.message_id, Institution.CMU, AckStatus.ACCEPTED, adjudication=d.payload)
        for d in decided
        for r in claim_rows.values()
        if uuid.UUID(r.event_id) == d.correlation_id
    ]
    report = apply_acks(run.app.engine, Institution.CMU, again, channel="api")
    assert (report.applied, report.duplicates, report.adjudications) == (0, 3, [])
    assert anomalies(run) == []


def test_an_ack_for_a_message_given_up_on_is_applied_and_kept_as_an_anomaly(
    start: Callable[..., Run], partners: Partners
) -> None:
    css = partners.css
    css.faults.drop_rate = 1.0  # CSS takes every message, every answer is lost
    # one message per member (enrolments), so each is sent and none waits behind another
    run = start(activity(members=3, months=0), delivery_max_attempts=2)
    run.wait(lambda: run.unfinished(Institution.CSS) == 0, 60, "CSS to be given up on")
    css_rows = rows_of(run, Institution.CSS)
    assert css_rows
    assert all(r.state == DeliveryState.DEAD for r in css_rows)
    assert css.recorder.accepted_ids() == {r.message_id for r in css_rows}

    # CSS's answers turn up late (its back office re-sends them): the very bytes it answered.
    late = []
    for r in css_rows:
        prior = css.recorder.accepted_before(r.message_id)
        assert prior is not None
        assert prior[1] is not None
        late += parse_css_ack(prior[1].body)
    report = apply_acks(run.app.engine, Institution.CSS, late, channel="api")
    assert report.applied == len(css_rows)
    assert report.anomalies == {"ack_while_dead": len(css_rows)}
    after = rows_of(run, Institution.CSS)
    assert all(r.state == DeliveryState.ACCEPTED and r.institution_ref for r in after)
    kept = anomalies(run)
    assert {(a.message_id, a.kind, a.detail) for a in kept} == {
        (r.message_id, "ack_while_dead", "applied") for r in css_rows
    }
    # and once more: now a plain duplicate
    again = apply_acks(run.app.engine, Institution.CSS, late, channel="api")
    assert (again.applied, again.duplicates, sum(again.anomalies.values())) == (0, len(late), 0)


def test_a_late_then_contradicting_ipres_ack_file_leaves_the_first_answer(
    start: Callable[..., Run], partners: Partners
) -> None:
    ipres = partners.ipres
    ipres.faults.late_ack_s = 3.0
    run = start(activity(members=3, months=1))
    run.wait(
        lambda: (
            bool(rows_of(run, Institution.IPRES))
            and all(r.state == DeliveryState.SENT for r in rows_of(run, Institution.IPRES))
            and ipres.pending_acks() > 0
        ),
        30,
        "IPRES to have the file, its ack not yet written",
    )
    run.wait(lambda: run.unfinished(Institution.IPRES) == 0, 30, "the late ack")
    rows = rows_of(run, Institution.IPRES)
    assert all(r.state == DeliveryState.ACCEPTED for r in rows)
    assert anomalies(run) == [], "a late ack for a sent message is ordinary"

    # IPRES corrects itself: an ack file rejecting a record it had accepted
    target = rows[0]
    correction = build_ack_file(
        [
            Ack(
                target.message_id,
                Institution.IPRES,
                AckStatus.REJECTED,
                "R080",
                "Assuré décédé ou radié",
            )
        ],
        file_id="IPRES-CORRIGE",
        declaration_file_id=target.batch_ref or "INCONNU",
        created=date.today(),
    )
    (ipres.acks / "correction.ack").write_bytes(correction)
    run.wait(lambda: bool(anomalies(run)), 30, "the correction to be read")
    [conflict] = anomalies(run)
    assert (conflict.message_id, conflict.kind, conflict.status, conflict.reason_code) == (
        target.message_id,
        "conflicting_ack",
        "rejected",
        "R080",
    )
    assert conflict.channel == "file"
    with Session(run.app.engine) as s:
        kept = s.get_one(OutboxRow, target.id)
    assert (kept.state, kept.reason_code) == (DeliveryState.ACCEPTED, None), "the first stands"
    assert (ipres.acks / "processed" / "correction.ack").exists()


def test_css_down_makes_dead_letters_that_replay_brings_to_accepted(
    start: Callable[..., Run], partners: Partners
) -> None:
    css = partners.css
    css.faults.down = True
    run = start(activity(members=3, months=1), delivery_max_attempts=2)
    run.wait(lambda: run.unfinished() == 0, 60, "CSS rows to die, the others to finish")
    css_rows = rows_of(run, Institution.CSS)
    assert all(r.state == DeliveryState.DEAD for r in css_rows)
    with Session(run.app.engine) as s:
        dead = list(
            s.scalars(
                select(DeadLetterRow)
                .where(DeadLetterRow.institution == "css")
                .order_by(DeadLetterRow.id)
            )
        )
    assert {d.message_id for d in dead} == {r.message_id for r in css_rows}
    for d in dead:
        assert d.reason == "retries_exhausted"
        assert d.source == "delivery:http"
        assert d.attempts == 2
        assert d.detail.removesuffix(" (circuit now open)") in (
            "HTTP 503",
            "an earlier message failed",
            "circuit open after repeated failures",
        ), d.detail
        assert d.original == next(r.body for r in css_rows if r.message_id == d.message_id)
    assert css.received == [], "CSS never took anything"
    assert all(r.state == DeliveryState.ACCEPTED for r in run.rows() if r.institution != "css")

    css.faults.down = False
    # In dead-letter order: a member's later letter replayed first would leave before its
    # earlier one (a dead row does not hold its member's later rows back).
    results = replay(run.app.engine, run.app.processor(), [d.id for d in dead])
    assert set(results.values()) == {"redelivered"}
    run.wait(lambda: run.unfinished(Institution.CSS) == 0, 60, "the replayed deliveries")
    assert all(r.state == DeliveryState.ACCEPTED for r in rows_of(run, Institution.CSS))
    assert css.recorder.accepted_ids() == {r.message_id for r in css_rows}
    test_partners.in_member_order(run, [m.message_id for m in css.received], Institution.CSS)
    again = replay(run.app.engine, run.app.processor(), [d.id for d in dead])
    assert set(again.values()) == {"already_redelivered"}


def test_a_decision_not_published_holds_its_answer_back_until_it_is(
    jokko_settings: Callable[..., Settings], partners: Partners
) -> None:
    """The worker publishes CMU's decisions before committing the answers: a failed publish
    leaves the claim pending, and the next try publishes the same event."""
    partners.cmu.adjudicate_claims = ClaimOutcome.APPROVED
    app = bootstrap(jokko_settings(**partners.settings), kafka=False)
    channels = app.channels()
    try:
        events = claims_with_their_members()
        app.processor().process_batch(
            [RawRecord("canonical", 0, i, dump_event(e)) for i, e in enumerate(events)]
        )
        published: list[ClaimAdjudicated] = []
        broker_down = True

        def decisions(batch: Sequence[ClaimAdjudicated]) -> None:
            if broker_down:
                raise DecisionsUnpublished("broker away")
            published.extend(batch)

        worker = DeliveryWorker(
            app.engine,
            channels[Institution.CMU],
            batch_size=100,
            decisions=decisions,
            vault=app.vault,
        )
        with pytest.raises(DecisionsUnpublished):
            worker.deliver_once()
        with Session(app.engine) as s:
            cmu = list(s.scalars(select(OutboxRow).where(OutboxRow.institution == "cmu")))
        assert all(r.state == DeliveryState.PENDING and r.attempts == 0 for r in cmu)
        assert len(partners.cmu.recorder.accepted_ids()) == len(cmu), "CMU has them all"

        broker_down = False
        # sent again at once: within the same second, still not taken for a replay
        assert worker.deliver_once() == len(cmu)
        claim_ids = {e.event_id for e in events if e.event_type == "claim.submitted"}
        assert {e.correlation_id for e in published} == claim_ids
        assert len(published) == len(claim_ids)
        by_message = {r.event_id: r.message_id for r in cmu}
        for e in published:
            assert e.event_id == uuid.uuid5(
                ADJUDICATION_NS, f"cmu:{by_message[str(e.correlation_id)]}"
            )
        assert all(m.resent for m in partners.cmu.received[len(cmu) :]), (
            "the second try was CMU's first answer again"
        )
    finally:
        for channel in channels.values():
            channel.close()
        app.engine.dispose()


def test_decisions_in_acks_are_published_before_the_acks_commit(store: Engine) -> None:
    """An ack topic or the API brings CMU's decisions: if they cannot be put on the canonical
    topic, the acks are not applied either, and reading them again publishes the decisions
    (before, the acks stayed applied and the decisions were lost to the re-read)."""
    events = claims_with_their_members()
    Processor(store, outbound_adapters()).process_batch(
        [RawRecord("canonical", 0, i, dump_event(e)) for i, e in enumerate(events)]
    )
    submitted = {str(e.event_id): e for e in events if isinstance(e, ClaimSubmitted)}
    with Session(store) as s:
        claims = s.scalars(
            select(OutboxRow).where(
                OutboxRow.institution == "cmu", OutboxRow.event_id.in_(submitted)
            )
        ).all()
    assert claims
    decided = datetime(2026, 3, 20, 9, tzinfo=UTC)
    acks = [
        Ack(
            r.message_id,
            Institution.CMU,
            AckStatus.ACCEPTED,
            adjudication=ClaimAdjudicatedPayload(
                claim_id=submitted[r.event_id].payload.claim_id,
                adjudicator="CMU",
                outcome=ClaimOutcome.APPROVED,
                claimed_amount=submitted[r.event_id].payload.total,
                approved_amount=submitted[r.event_id].payload.total,
            ),
            decided_at=decided,
        )
        for r in claims
    ]

    def broker_away(_events: Sequence[ClaimAdjudicated]) -> None:
        raise BrokerUnavailable("broker away")

    with pytest.raises(BrokerUnavailable):
        apply_acks(store, Institution.CMU, acks, channel="kafka", decisions=broker_away)
    with Session(store) as s:
        states = set(s.scalars(select(OutboxRow.state).where(OutboxRow.institution == "cmu")))
    assert states == {DeliveryState.PENDING}, "nothing applied"
    published: list[ClaimAdjudicated] = []
    report = apply_acks(store, Institution.CMU, acks, channel="kafka", decisions=published.extend)
    assert report.applied == len(claims)
    assert sorted(e.correlation_id for e in published) == sorted(
        uuid.UUID(r.event_id) for r in claims
    )
    assert {e.occurred_at for e in published} == {decided}
    again: list[ClaimAdjudicated] = []
    apply_acks(store, Institution.CMU, acks, channel="kafka", decisions=again.extend)
    assert again == [], "applied once: the decisions went out with it"
