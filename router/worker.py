"""``jokko router``: a consumer-group member on the canonical topic.

Order of work for every polled batch: each record's transaction (inbox + outbox) commits,
*then* the batch's offsets are committed to Kafka. A kill at any instant therefore either
re-delivers records whose transaction already committed (the inbox refuses them) or records
that were never applied (they are applied now): nothing is lost, nothing doubled.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from sqlalchemy.exc import OperationalError
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from router.processing import Outcome, Processor, RawRecord

log = logging.getLogger(__name__)


class RouterWorker:
    def __init__(
        self,
        consumer: KafkaConsumer,
        processor: Processor,
        *,
        db_retry_budget_s: float = 120.0,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._processor = processor
        self.stats: Counter[Outcome] = Counter()
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._on_outcome = on_outcome
        # The database being briefly unreachable is no reason to skip a record: wait it out,
        # with jittered back-off so several routers do not hammer it in step.
        self._retrying = Retrying(
            retry=retry_if_exception_type(OperationalError),
            wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
            stop=stop_after_delay(db_retry_budget_s),
            reraise=True,
        )

    def poll_once(self, timeout_ms: int = 500) -> int:
        """Process one polled batch and commit its offsets; returns the records handled."""
        batch = self._consumer.poll(timeout_ms=timeout_ms)
        raws = [
            RawRecord(r.topic, r.partition, r.offset, r.value or b"", tuple(r.headers or ()))
            for records in batch.values()
            for r in records
        ]
        if not raws:
            self._commit()  # offsets deferred by an outage go as soon as it is over
            return 0
        # One transaction for the whole batch, then the offsets: never the other way round.
        outcomes = self._retrying(self._processor.process_batch, raws)
        for outcome in outcomes:
            self.stats[outcome] += 1
            if self._on_outcome:
                self._on_outcome(outcome)
        for tp, records in batch.items():
            if records:
                self._uncommitted[TopicPartition(tp.topic, tp.partition)] = OffsetAndMetadata(
                    records[-1].offset + 1, "", -1
                )
        self._commit()
        return len(raws)

    def _commit(self) -> None:
        """Commit what the store already holds. If the broker cannot take the commit now
        (outage, rebalance), keep the offsets and try again after the next batch: the store
        is already right, and a re-delivery in between is recognised by the inbox."""
        if not self._uncommitted:
            return
        try:
            self._consumer.commit(dict(self._uncommitted))
            self._uncommitted.clear()
        except KafkaError as exc:
            log.warning("offset commit deferred: %s", exc)

    def close(self) -> None:
        """Leave the group (a static member keeps its assignment until its session ends)."""
        self._consumer.close()

    def run(self, stop: threading.Event) -> None:
        log.info("router started")
        failures = 0
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                    failures = 0
                except KafkaError as exc:
                    # The broker went away under ``poll`` (found by the broker-stop test): this
                    # poll applied nothing, so polling again once it is back loses nothing.
                    failures += 1
                    log.warning("broker unavailable, polling again: %s", exc)
                    stop.wait(min(5.0, 0.1 * 2**failures))
        finally:
            self.close()
            log.info("router stopped: %s", dict(self.stats))
