"""The canonical topic on the wire: canonical events in, keyed by member for per-member order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from router.envelope import open_canonical, seal_canonical
from router.errors import BrokerUnavailable
from router.vault import Vault
from schemas import CanonicalEvent, dump_event, parse_event


@dataclass(frozen=True)
class Published:
    """Where the broker durably stored one event (acks=all)."""

    event_id: str
    partition: int
    offset: int


def record_headers(event: CanonicalEvent) -> list[tuple[str, bytes]]:
    """Headers let a consumer route or dead-letter a record without parsing its body."""
    return [
        ("event_id", str(event.event_id).encode()),
        ("event_type", event.event_type.encode()),
        ("schema_version", str(event.schema_version).encode()),
    ]


def canonical_record(
    event: CanonicalEvent, vault: Vault | None
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of an event's record: sealed under the keyring's current data key
    (``router.envelope``); ``vault`` None writes a clear record, for tests of other concerns."""
    value, headers = dump_event(event), record_headers(event)
    if vault is None:
        return value, headers
    value, sealed = seal_canonical(vault, str(event.event_id), value)
    return value, [*headers, sealed]


def publish_events(
    producer: KafkaProducer,
    topic: str,
    events: Iterable[CanonicalEvent],
    *,
    vault: Vault | None,
    timeout_s: float = 30,
) -> list[Published]:
    """Send events keyed by ``member_id`` and wait until the broker has acknowledged each.

    ``vault`` seals each value (``router.envelope``); every producer Jokko runs passes one,
    the argument has no default so that none forgets it.

    ``timeout_s`` bounds the whole call (the sends and the acks), given a producer
    whose ``max_block_ms`` is no longer. It raises ``BrokerUnavailable`` when nothing can
    have been stored, and ``OutcomeUnknown`` (a ``BrokerUnavailable``) when records were
    handed to the producer but not acknowledged in time: the producer keeps trying them until
    its delivery timeout, so they may still be stored.
    """
    deadline = time.monotonic() + timeout_s
    sent: list[tuple[CanonicalEvent, Any]] = []
    events = list(events)
    try:
        for event in events:
            value, headers = canonical_record(event, vault)
            sent.append(
                (
                    event,
                    producer.send(
                        topic, key=event.member_id.encode(), value=value, headers=headers
                    ),
                )
            )
    except KafkaError as exc:  # no metadata within max_block_ms, or the buffer is full
        if not sent:
            raise BrokerUnavailable(f"could not send to {topic}: {type(exc).__name__}") from exc
        raise OutcomeUnknown(
            f"{len(sent)} of {len(events)} events sent to {topic} before {type(exc).__name__}",
            InFlight(sent, complete=False),
        ) from exc
    # Each of our own futures against one deadline, not ``flush``: kafka-python's flush waits
    # up to its timeout for every incomplete batch in turn (any request's), so a broker coming
    # back could stretch it to a multiple of the bound. linger_ms sends them within 5 ms.
    try:
        published = []
        for event, future in sent:
            meta = future.get(timeout=_left(deadline))
            published.append(Published(str(event.event_id), meta.partition, meta.offset))
    except KafkaError as exc:
        if all(future.is_done for _event, future in sent):  # failed for sure, none pending
            raise BrokerUnavailable(
                f"the broker refused events for {topic}: {type(exc).__name__}"
            ) from exc
        raise OutcomeUnknown(
            f"no acknowledgement from the broker for {topic} within {timeout_s}s",
            InFlight(sent, complete=True),
        ) from exc
    return published


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


class InFlight:
    """Events handed to the producer whose acknowledgement did not come in time."""

    def __init__(self, sent: list[tuple[CanonicalEvent, Any]], *, complete: bool) -> None:
        self._sent = sent
        self._complete = complete
        self._lock = threading.Lock()
        self._waiting = len(sent)
        self.event_ids = [str(event.event_id) for event, _future in sent]

    def on_settled(self, callback: Callable[[list[Published] | None], None]) -> None:
        """Call ``callback`` once every record is settled (at the latest after the producer's
        delivery timeout), from the producer's I/O thread, so it must not block: with where
        each event was stored if all were (and all of the call's events had been sent), else
        with None."""

        def one_settled(_result: object) -> None:
            with self._lock:
                self._waiting -= 1
                last = self._waiting == 0
            if last:
                callback(self._outcome())

        for _event, future in self._sent:
            future.add_both(one_settled)

    def _outcome(self) -> list[Published] | None:
        if not self._complete or any(future.failed() for _event, future in self._sent):
            return None
        return [
            Published(str(event.event_id), future.value.partition, future.value.offset)
            for event, future in self._sent
        ]


class OutcomeUnknown(BrokerUnavailable):
    """Not acknowledged in time, but handed to the producer: the events may still be stored.
    ``in_flight`` tells when the producer has settled them."""

    detail = (
        "the event stream (Kafka) did not confirm the events in time; they may still be "
        "stored: send the same request again (same Idempotency-Key) to learn the outcome, "
        "an event takes effect once"
    )

    def __init__(self, message: str, in_flight: InFlight) -> None:
        super().__init__(message)
        self.in_flight = in_flight


def decode_record(record: Any, vault: Vault | None = None) -> CanonicalEvent:
    """Open and parse a consumed record's value; raises ``Unsealable`` for a record that
    cannot be opened, ``InvalidEvent`` for a poison record."""
    return parse_event(open_canonical(vault, record.value, record.headers or ()))
