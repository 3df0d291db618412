"""Proof of delivery: every push, batch, declaration file and Kafka record is in the
hash-chained message log, and one message's evidence bundle verifies offline, with `jokko
evidence verify` and with a verifier that does not import Jokko, and fails both after one
changed byte (real broker, real PostgreSQL, the relay pushing signed messages to the fake
CMU over HTTP on loopback, writing IPRES's files, producing CSS's sealed topic)."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cryptography
import pytest
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from adapters.base import Institution
from router.audit import GENESIS
from router.msglog import Sent, append, check
from router.store import DeliveryState, MessageLogRow, utcnow
from services import keyring
from services.bootstrap import bootstrap
from services.cli import app as cli
from services.settings import Settings
from tests.factories import enrolments
from tests.fakes.cmu import FakeCMU
from tests.fakes.css import FakeCSS
from tests.fakes.faults import Faults
from tests.fakes.ipres import FakeIPRES
from tests.fakes.kafka_partner import KafkaPartner
from tests.fakes.server import serve
from tests.integration.test_audit import database_url
from tests.integration.test_partners import SECRETS
from tests.integration.test_signed_messages import (
    FAST_RETRIES,
    activity,
    relaying,
    rows,
    wait,
)

pytestmark = pytest.mark.integration

STANDALONE_VERIFIER = textwrap.dedent(
    """
    # An auditor's check of a Jokko evidence bundle: the standard library and `cryptography`.
    import base64, hashlib, json, sys
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        import router  # noqa: F401
        sys.exit("Jokko is importable here: not an independent verifier")
    except ImportError:
        pass

    FIELDS = ["id", "sent_at", "institution", "signed_id", "message_ids", "timestamp",
              "body_sha256", "key_id", "signature", "status", "outcome"]

    def sha(data):
        return hashlib.sha256(data).hexdigest()

    def b64(text):
        return base64.b64decode(text, validate=True)

    def row_hash(row):
        fields = [row[f] for f in FIELDS]
        if row.get("detail") is not None:  # batches, files, Kafka records
            fields.append(row["detail"])
        encoded = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        return sha(bytes.fromhex(row["prev_hash"]) + encoded)

    doc = json.load(open(sys.argv[1]))
    row = doc["log_row"]
    assert doc["message_id"] in json.loads(row["message_ids"]), "message not in the row"
    detail = json.loads(row["detail"]) if row.get("detail") else None
    kind = detail["kind"] if detail else "push"
    body = b64(doc["message"]["body"])
    if kind in ("batch", "file"):  # its part, every part's digest, the whole rebuilt
        parts = detail["parts"]
        _, start, end, digest = parts[[p[0] for p in parts].index(doc["message_id"])]
        assert sha(body[start:end]) == digest, "the message's part"
        given = [b64(p) for p in doc["batch"]["parts"]]
        for (mid, _, _, logged), part in zip(parts, given):
            assert sha(part) == logged, f"the part of {mid}"
        glue = [b64(g) for g in detail["glue"]]
        sent = glue[0] + b"".join(p + g for p, g in zip(given, glue[1:]))
    elif kind == "kafka" and detail["sealed"]:  # signed as sealed; the clear body's digest
        assert sha(body) == detail["clear_sha256"], "the clear body"
        sent = b64(doc["record"]["value"])
    else:
        sent = body
    assert sha(sent) == row["body_sha256"], "digest"
    key = doc["key"]
    assert key["kid"] == row["key_id"] and key["crv"] == "Ed25519", "key"
    x = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
    signed = sent if kind == "file" else f"{row['signed_id']}.{row['timestamp']}.".encode() + sent
    Ed25519PublicKey.from_public_bytes(x).verify(b64(row["signature"]), signed)
    chain = [row, *doc["chain"]]
    for before, r in zip([None, *chain], chain):
        assert row_hash(r) == r["row_hash"], f"row {r['id']} altered"
        assert before is None or r["prev_hash"] == before["row_hash"], f"row {r['id']} link"
    print("verified", doc["message_id"], kind, "head", chain[-1]["row_hash"])
    """
)


def _libs(tmp_path: Path) -> Path:
    """Only `cryptography` (and what it loads) on the path: python -S reads no .pth, so the
    editable install of Jokko is not importable."""
    libs = tmp_path / "libs"
    libs.mkdir()
    for name in ("cryptography", "cffi", "_cffi_backend"):
        for found in Path(cryptography.__file__).parent.parent.glob(f"{name}*"):
            if not found.name.endswith(".dist-info"):
                (libs / found.name).symlink_to(found)
    return libs


def _flip(doc: dict[str, Any], part: str) -> dict[str, Any]:
    """``doc`` with one byte changed in ``part``."""
    bad = copy.deepcopy(doc)
    if part == "message":
        body = bytearray(base64.b64decode(bad["message"]["body"]))
        body[len(body) // 2] ^= 0x01
        bad["message"]["body"] = base64.b64encode(bytes(body)).decode()
    elif part == "signature":
        sig = bytearray(base64.b64decode(bad["log_row"]["signature"]))
        sig[5] ^= 0x01
        bad["log_row"]["signature"] = base64.b64encode(bytes(sig)).decode()
    elif part == "log row":
        bad["log_row"]["status"] = bad["log_row"]["status"] + 1
    elif part == "chain link":
        link = bad["chain"][0]
        link["body_sha256"] = ("1" if link["body_sha256"][0] != "1" else "2") + link["body_sha256"][
            1:
        ]
    elif part == "key":
        x = bytearray(base64.urlsafe_b64decode(bad["key"]["x"] + "="))
        x[0] ^= 0x01
        bad["key"]["x"] = base64.urlsafe_b64encode(bytes(x)).rstrip(b"=").decode()
    return bad


def test_an_evidence_bundle_verifies_offline_and_fails_after_one_changed_byte(
    jokko_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keyring_file = tmp_path / "keyring.json"
    keyring.create(keyring_file)
    kid = keyring.message_keys(keyring_file).current.kid
    cmu = FakeCMU(None, Faults(), jwks=keyring.message_keys(keyring_file).jwks())
    with serve(cmu.app) as cmu_url:
        settings = jokko_settings(
            keyring_file=keyring_file,
            cmu={"mode": "http", "allow_plain_http": True, "url": f"{cmu_url}/fhir"},
            **FAST_RETRIES,
        )
        app = bootstrap(settings)
        try:
            with relaying(app, enrolments(4)):
                wait(
                    lambda: all(
                        r.state == DeliveryState.ACCEPTED for r in rows(app, Institution.CMU)
                    ),
                    60,
                    "CMU's pushes accepted",
                )
            sent = rows(app, Institution.CMU)
            with Session(app.engine) as s:
                logged = list(s.scalars(select(MessageLogRow).order_by(MessageLogRow.id)))
            # the log refuses UPDATE and DELETE
            for statement in ("UPDATE message_log SET status = 500", "DELETE FROM message_log"):
                with pytest.raises(DBAPIError, match="append-only"), app.engine.begin() as c:
                    c.execute(text(statement))
        finally:
            app.engine.dispose()

    assert len(sent) == 4
    pushes = [r for r in logged if r.institution == "cmu"]  # CSS's and IPRES's topics too
    assert {json.loads(r.message_ids)[0] for r in pushes} == {r.message_id for r in sent}
    assert logged[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(logged))
    assert all(r.key_id == kid and r.status == 200 and r.detail is None for r in pushes)
    records = [r.detail or "{}" for r in logged if r.institution != "cmu"]
    assert all(json.loads(d).get("kind") == "kafka" for d in records)
    first = sent[0].message_id

    monkeypatch.setattr("services.cli.wiring.load_settings", lambda: settings)
    runner = CliRunner()
    bundle = tmp_path / "bundle.json"
    made = runner.invoke(cli, ["evidence", first, "--out", str(bundle)])
    assert made.exit_code == 0, made.output
    doc = json.loads(bundle.read_text())
    assert doc["key"]["kid"] == kid
    assert doc["chain"], "the rows after it, to the head"
    assert doc["chain"][-1]["row_hash"] == logged[-1].row_hash
    assert doc["receipt"] is None, "no receipt table on this branch"
    assert check(doc) == []

    work = tmp_path / "auditor"  # not the repository: Jokko is not importable from here
    work.mkdir()
    (work / "verify.py").write_text(STANDALONE_VERIFIER)
    libs = _libs(tmp_path)

    def standalone(path: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-S", "verify.py", str(path)]
        env = {"PYTHONPATH": str(libs), "PATH": os.environ.get("PATH", "")}
        return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=60)

    def jokko_verifies(path: Path) -> Any:
        return runner.invoke(cli, ["evidence", "verify", str(path)])

    good = standalone(bundle)
    assert good.returncode == 0, good.stderr
    assert first in good.stdout
    ok = jokko_verifies(bundle)
    assert ok.exit_code == 0, ok.output
    assert "evidence verified" in ok.output

    for part, named in [
        ("message", "digest"),
        ("signature", "signature"),
        ("log row", f"row {doc['log_row']['id']}"),
        ("chain link", f"row {doc['chain'][0]['id']}"),
        ("key", "signature"),
    ]:
        altered = tmp_path / f"altered-{part.replace(' ', '-')}.json"
        altered.write_text(json.dumps(_flip(doc, part)))
        assert standalone(altered).returncode != 0, f"standalone accepted an altered {part}"
        refused = jokko_verifies(altered)
        assert refused.exit_code == 1, f"jokko accepted an altered {part}"
        assert named in refused.output, (part, refused.output)


_Flip = Callable[[dict[str, Any]], dict[str, Any]]


def _flip_b64(doc: dict[str, Any], *path: Any) -> dict[str, Any]:
    """``doc`` with one byte changed in the base64 value at ``path``."""
    bad = copy.deepcopy(doc)
    holder = bad
    for key in path[:-1]:
        holder = holder[key]
    raw = bytearray(base64.b64decode(holder[path[-1]]))
    raw[len(raw) // 2] ^= 0x01
    holder[path[-1]] = base64.b64encode(bytes(raw)).decode()
    return bad


def _flip_glue(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with one byte of the batch envelope's own bytes changed, in the log row."""
    bad = copy.deepcopy(doc)
    detail = json.loads(bad["log_row"]["detail"])
    glue = bytearray(base64.b64decode(detail["glue"][0]))
    glue[1] ^= 0x01
    detail["glue"][0] = base64.b64encode(bytes(glue)).decode()
    bad["log_row"]["detail"] = json.dumps(detail, sort_keys=True, separators=(",", ":"))
    return bad


def test_batches_files_and_kafka_records_verify_offline_and_fail_after_one_changed_byte(
    jokko_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CMU batched over HTTP, IPRES by declaration file, CSS reading its sealed topic (its
    consumer checks each record's signature with the JWKS alone): a bundle of each kind
    verifies, with Jokko and without, and fails after one changed byte in any part."""
    keyring_file = tmp_path / "keyring.json"
    keyring.create(keyring_file)
    jwks = keyring.message_keys(keyring_file).jwks()
    css_key_file = tmp_path / "css-topic-key.json"
    keyring.topic_key(css_key_file, "css")
    cmu = FakeCMU(None, Faults(), jwks=jwks)
    css = FakeCSS(SECRETS[Institution.CSS], Faults())  # judges what CSS's consumer reads
    ipres = FakeIPRES(tmp_path / "ipres-in", tmp_path / "ipres-acks", Faults(), jwks=jwks)
    with serve(cmu.app) as cmu_url, serve(css.app) as css_url, ipres:
        settings = jokko_settings(
            keyring_file=keyring_file,
            cmu={
                "mode": "http",
                "allow_plain_http": True,
                "url": f"{cmu_url}/fhir",
                "batch_size": 4,
            },
            css={"mode": "kafka", "topic_key_file": css_key_file},
            ipres={"mode": "file", "outbox_dir": ipres.inbox, "ack_dir": ipres.acks},
            **FAST_RETRIES,
        )
        app = bootstrap(settings)
        try:
            with (
                KafkaPartner(
                    settings.kafka_bootstrap,
                    app.topics,
                    Institution.CSS,
                    f"{css_url}{FakeCSS.path}",
                    SECRETS[Institution.CSS],
                    topic_key=keyring.load_topic_key(css_key_file),
                    jwks=jwks,
                ) as partner,
                relaying(app, activity(members=6, months=1, seed="evid2")),
            ):
                wait(
                    lambda: all(r.state == DeliveryState.ACCEPTED for r in rows(app)),
                    90,
                    "every delivery accepted",
                )
            sent = rows(app)
            with Session(app.engine) as s:
                logged = list(s.scalars(select(MessageLogRow).order_by(MessageLogRow.id)))
        finally:
            app.engine.dispose()
    assert partner.forged == 0, "every record's signature verified with the JWKS alone"
    assert partner.consumed >= sum(r.institution == "css" for r in sent)
    kinds = {json.loads(r.detail)["kind"] if r.detail else "push" for r in logged}
    assert {"batch", "file", "kafka"} <= kinds
    assert all(r.key_id == jwks["keys"][0]["kid"] for r in logged)
    records = [json.loads(r.detail) for r in logged if r.detail and "kafka" in r.detail]
    assert all(d["sealed"] and d["offset"] >= 0 for d in records), "sealed, the broker's offset"

    def carried_by(kind: str) -> str:
        for r in logged:
            if (
                r.detail
                and json.loads(r.detail)["kind"] == kind
                and len(json.loads(r.message_ids)) > (1 if kind != "kafka" else 0)
            ):
                return str(json.loads(r.message_ids)[-1])
        raise AssertionError(f"no {kind} row")

    monkeypatch.setattr("services.cli.wiring.load_settings", lambda: settings)
    runner = CliRunner()
    intact = runner.invoke(cli, ["evidence", "verify-log"])
    assert intact.exit_code == 0, intact.output
    assert f"message log intact: {len(logged)} rows checked" in intact.output
    checkpoint = tmp_path / "checkpoint.json"
    assert runner.invoke(cli, ["evidence", "checkpoint", "--out", str(checkpoint)]).exit_code == 0
    work = tmp_path / "auditor"
    work.mkdir()
    (work / "verify.py").write_text(STANDALONE_VERIFIER)
    libs = _libs(tmp_path)

    def standalone(path: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-S", "verify.py", str(path)]
        env = {"PYTHONPATH": str(libs), "PATH": os.environ.get("PATH", "")}
        return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=60)

    cases: list[tuple[str, list[tuple[_Flip, str]]]] = [
        (
            "batch",
            [
                (lambda d: _flip_b64(d, "message", "body"), "digest of its part"),
                (lambda d: _flip_b64(d, "batch", "parts", 0), "SHA-256 is not the logged"),
                (_flip_glue, "does not match its hash"),
                (lambda d: _flip_b64(d, "log_row", "signature"), "signature"),
            ],
        ),
        (
            "file",
            [
                (lambda d: _flip_b64(d, "batch", "parts", 1), "SHA-256 is not the logged"),
                (lambda d: _flip_b64(d, "log_row", "signature"), "signature"),
            ],
        ),
        (
            "kafka",
            [
                (lambda d: _flip_b64(d, "record", "value"), "record: its SHA-256"),
                (lambda d: _flip_b64(d, "message", "body"), "clear body"),
                (lambda d: _flip_b64(d, "log_row", "signature"), "signature"),
            ],
        ),
    ]
    for kind, flips in cases:
        message_id = carried_by(kind)
        bundle = tmp_path / f"{kind}.json"
        made = runner.invoke(cli, ["evidence", message_id, "--out", str(bundle)])
        assert made.exit_code == 0, made.output
        doc = json.loads(bundle.read_text())
        ok = runner.invoke(
            cli, ["evidence", "verify", str(bundle), "--checkpoint", str(checkpoint)]
        )
        assert ok.exit_code == 0, (kind, ok.output)
        assert "signature" in ok.output, ok.output  # the whole batch, or the sealed value
        good = standalone(bundle)
        assert good.returncode == 0, (kind, good.stderr)
        assert f"verified {message_id} {kind}" in good.stdout
        for flip, named in flips:
            altered = tmp_path / f"altered-{kind}.json"
            altered.write_text(json.dumps(flip(doc)))
            assert standalone(altered).returncode != 0, f"standalone accepted an altered {kind}"
            refused = runner.invoke(cli, ["evidence", "verify", str(altered)])
            assert refused.exit_code == 1, (kind, named)
            assert named in refused.output, (kind, named, refused.output)
        if kind == "batch":  # the other members' messages left out: digests only
            alone = tmp_path / "batch-alone.json"
            made = runner.invoke(
                cli, ["evidence", message_id, "--message-only", "--out", str(alone)]
            )
            assert made.exit_code == 0, made.output
            assert json.loads(alone.read_text())["batch"]["parts"][0] is None
            checked = runner.invoke(cli, ["evidence", "verify", str(alone)])
            assert checked.exit_code == 0, checked.output
            assert "digests only" in checked.output


def test_jokko_evidence_verify_log_names_the_first_row_at_fault(
    store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pushes and records side by side; a row cut off the end is caught with a published
    head, an edited row (its hash left as it was) by its hash."""
    for i in range(1, 6):
        detail = {"kind": "kafka", "topic": "jokko.out.css.v1", "sealed": None} if i % 2 else None
        sent = Sent(f"m-{i}", (f"m-{i}",), 1_765_000_000 + i, "ab" * 32, "k", "c2ln", None, detail)
        with store.begin() as conn:
            append(conn, [(sent, {f"m-{i}": "sent"})], institution="css", at=utcnow())
    monkeypatch.setenv("JOKKO_DATABASE_URL", database_url(store))
    runner = CliRunner()
    intact = runner.invoke(cli, ["evidence", "verify-log"])
    assert intact.exit_code == 0, intact.output
    assert "message log intact: 5 rows checked" in intact.stdout
    with Session(store) as s:
        head = s.scalars(select(MessageLogRow.row_hash).where(MessageLogRow.id == 5)).one()
    assert f"head: row 5 {head}" in intact.stdout
    recent = runner.invoke(cli, ["evidence", "verify-log", "--since", "2000-01-01T00:00:00"])
    assert "5 rows checked" in recent.stdout

    with _unguarded(store) as conn:
        conn.execute(text("DELETE FROM message_log WHERE id = 5"))
    cut = runner.invoke(cli, ["evidence", "verify-log", "--head", head])
    assert cut.exit_code == 1
    assert "rows were cut off its end" in cut.stderr
    with _unguarded(store) as conn:
        conn.execute(text("UPDATE message_log SET outcome = '{}' WHERE id = 3"))
    broken = runner.invoke(cli, ["evidence", "verify-log"])
    assert broken.exit_code == 1
    assert "message log broken (2 rows good): row 3 was altered" in broken.stderr


@contextmanager
def _unguarded(engine: Engine) -> Iterator[Connection]:
    """The append-only triggers out of the way, as someone with DDL rights has them."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE message_log DISABLE TRIGGER message_log_append_only"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS message_log_no_update"))
            conn.execute(text("DROP TRIGGER IF EXISTS message_log_no_delete"))
        yield conn
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE message_log ENABLE TRIGGER message_log_append_only"))
