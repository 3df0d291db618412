"""The cost of Jokko's signatures per message: Ed25519 (``v1a``, the default) next to the
Standard Webhooks HMAC (``v1``), signing on Jokko's side and verifying on the institution's.

Run: ``.venv/bin/python -m bench.signing`` (a few seconds). The body is a real CMU push (the
claim Bundle of the examples) and a real IPRES declaration file of 500 records; verification
goes through the same verifiers the fakes use (timestamp window and replay memory included),
each call with a fresh message id so that none is refused as a replay.
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from importlib import import_module
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine

from adapters.base import Institution
from adapters.ipres import build_declaration_file
from bench.harness.measure import rate
from bench.harness.workload import routed_examples
from bench.record import figure, write_record
from router.migrate import upgrade
from router.msglog import Sent, append, carried_in
from router.signing import (
    JwksVerifier,
    MessageKeys,
    SigningKey,
    Verifier,
    sign_file,
    sign_push,
    sign_record,
    verify_file,
)

SECRET = b"bench-shared-secret-0123456789abcdef"
FILE_RECORDS = 500
VERIFY_CALLS = 10_000
SIGN_TARGET_US = 100.0
"""Per message, signing must stay well under the ~1 ms Jokko spends on a push's HTTP round
trip on loopback (bench/flow/): a tenth of it."""


def cmu_body() -> bytes:
    event, member = routed_examples(Institution.CMU)["claim.submitted"]
    body: bytes = import_module("adapters.cmu").translate(event, member)[0].body
    return body


def ipres_file() -> bytes:
    ipres = import_module("adapters.ipres")
    messages = []
    examples = routed_examples(Institution.IPRES)
    event, member = examples["contribution.paid"]
    template = ipres.translate(event, member)[0]
    for _ in range(FILE_RECORDS):
        mid = str(uuid.uuid4())
        body = template.body.replace(template.message_id.encode(), mid.encode())
        messages.append(replace(template, message_id=mid, body=body))
    content: bytes = build_declaration_file(messages, file_id="JBENCH", created=date.today())
    return content


LOG_CLAIM = 500
"""Kafka records per claim in the message-log figure (the relay's default batch size)."""


def message_log_costs(key: SigningKey, content: bytes) -> list[dict[str, Any]]:
    """Per message, what the message log adds on Jokko's side: signing a Kafka record, a
    declaration file's ``detail``, and the append of a claim of records (no broker needed)."""
    lines = content.split(b"\r\n")[1:-2]
    parts = [(str(i), line, line) for i, line in enumerate(lines)]
    detail = rate(lambda: carried_in("file", content, parts, file="JBENCH.dat"))
    value = cmu_body()
    sign = rate(lambda: sign_record(key, str(uuid.uuid4()), value, timestamp=int(time.time())))
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/log.db")
        upgrade(engine)
        headers = dict(sign_record(key, "m", value, timestamp=0))

        def claim() -> None:
            sent = [
                (
                    Sent(
                        str(uuid.uuid4()),
                        ("m",),
                        0,
                        hashlib.sha256(value).hexdigest(),
                        key.kid,
                        headers["webhook-signature"].decode()[4:],
                        None,
                        {"kind": "kafka", "topic": "jokko.out.cmu.v1", "partition": 0, "offset": i},
                    ),
                    {"m": "sent"},
                )
                for i in range(LOG_CLAIM)
            ]
            with engine.begin() as conn:
                append(conn, sent, institution="cmu", at=datetime.now(UTC))

        appends = rate(claim)
        engine.dispose()
    return [
        figure("sign_kafka_record", us_per_call(sign), "µs"),
        figure("msglog_file_detail_per_record", us_per_call(detail) / len(lines), "µs"),
        figure("msglog_append_sqlite_per_kafka_record", us_per_call(appends) / LOG_CLAIM, "µs"),
    ]


def us_per_call(calls_per_s: float) -> float:
    return 1e6 / calls_per_s


def main() -> None:
    key = SigningKey("message-bench", Ed25519PrivateKey.generate())
    jwks = MessageKeys(key).jwks()
    body = cmu_body()
    content = ipres_file()
    now = int(time.time())
    ids = (str(uuid.UUID(int=i)) for i in itertools.count())

    sign_hmac = rate(lambda: sign_push(next(ids), body, timestamp=now, secret=SECRET))
    sign_ed = rate(lambda: sign_push(next(ids), body, timestamp=now, key=key))
    sign_both = rate(lambda: sign_push(next(ids), body, timestamp=now, key=key, secret=SECRET))

    def verify_rate(verifier: Verifier | JwksVerifier, **signing: Any) -> float:
        """Verifications per second over VERIFY_CALLS requests signed beforehand (each
        distinct: a verifier refuses a replay), after a short warm-up."""
        signed = [
            sign_push(next(ids), body, timestamp=now, **signing) for _ in range(VERIFY_CALLS + 20)
        ]
        for headers in signed[:20]:
            verifier.verify(headers, body)
        start = time.perf_counter()
        for headers in signed[20:]:
            verifier.verify(headers, body)
        return VERIFY_CALLS / (time.perf_counter() - start)

    verify_hmac = verify_rate(Verifier([SECRET]), secret=SECRET)
    verify_ed = verify_rate(JwksVerifier(jwks), key=key)
    signature = sign_file(key, content)
    file_sign = rate(lambda: sign_file(key, content))
    file_verify = rate(lambda: verify_file(jwks, content, signature))

    log = message_log_costs(key, content)
    push = f"a CMU push ({len(body):,} bytes)"
    figures = [
        figure(
            "sign_ed25519_per_push",
            us_per_call(sign_ed),
            "µs",
            peer="sign_hmac_per_push",
            peer_value=us_per_call(sign_hmac),
            target=f"<= {SIGN_TARGET_US:.0f} µs",
            met=us_per_call(sign_ed) <= SIGN_TARGET_US,
        ),
        figure(
            "sign_both_per_push",
            us_per_call(sign_both),
            "µs",
            peer="sign_hmac_per_push",
            peer_value=us_per_call(sign_hmac),
        ),
        figure(
            "verify_ed25519_per_push",
            us_per_call(verify_ed),
            "µs",
            peer="verify_hmac_per_push",
            peer_value=us_per_call(verify_hmac),
        ),
        figure("sign_ipres_file_500_records", us_per_call(file_sign), "µs"),
        figure("sign_ipres_file_per_record", us_per_call(file_sign) / FILE_RECORDS, "µs"),
        figure("verify_ipres_file_500_records", us_per_call(file_verify), "µs"),
        figure("sign_ed25519_pushes_per_s_one_core", sign_ed, "pushes/s"),
        *log,
    ]
    for f in figures:
        peer = f" (peer {f['peer']}: {f['peer_value']})" if f["peer"] else ""
        print(f"{f['figure']:40} {f['value']:>12,.1f} {f['unit']}{peer}")
    notes = (
        f"One process, one core; the body is {push}, the file a {FILE_RECORDS}-record IPRES "
        f"declaration ({len(content):,} bytes). Signing (Jokko's relay) and verifying (the "
        "institution, with the same verifiers as the fakes: window and replay memory "
        "included) per call, each with a fresh message id. Ed25519 costs a few tens of "
        "microseconds where HMAC-SHA256 costs a few: per push, well under the HTTP round "
        "trip it rides on, and a file's signature is paid once for all its records. The "
        "message log (router/msglog.py): a file's detail (each record located and digested), "
        f"and the append of a claim of {LOG_CLAIM} signed Kafka records, one row each, to a "
        "SQLite log on local disk, commit (fsync) included: PostgreSQL is docs/operations.md's."
    )
    path = write_record("signing", figures, notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
