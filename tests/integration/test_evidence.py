"""Proof of delivery: every push is in the hash-chained message log, and one message's
evidence bundle verifies offline, with `jokko evidence verify` and with a verifier that does
not import Jokko, and fails both after one changed byte (real broker, real PostgreSQL, the
relay pushing signed messages to the fake CMU over HTTP on loopback)."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cryptography
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from adapters.base import Institution
from router.audit import GENESIS
from router.msglog import check
from router.store import DeliveryState, MessageLogRow
from services import keyring
from services.bootstrap import bootstrap
from services.cli import app as cli
from services.settings import Settings
from tests.factories import enrolments
from tests.fakes.cmu import FakeCMU
from tests.fakes.faults import Faults
from tests.fakes.server import serve
from tests.integration.test_signed_messages import FAST_RETRIES, relaying, rows, wait

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

    def row_hash(row):
        encoded = json.dumps([row[f] for f in FIELDS], ensure_ascii=False,
                             separators=(",", ":")).encode()
        return hashlib.sha256(bytes.fromhex(row["prev_hash"]) + encoded).hexdigest()

    doc = json.load(open(sys.argv[1]))
    row = doc["log_row"]
    assert doc["message_id"] in json.loads(row["message_ids"]), "message not in the row"
    body = base64.b64decode(doc["message"]["body"], validate=True)
    assert hashlib.sha256(body).hexdigest() == row["body_sha256"], "digest"
    key = doc["key"]
    assert key["kid"] == row["key_id"] and key["crv"] == "Ed25519", "key"
    x = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
    signed = f"{row['signed_id']}.{row['timestamp']}.".encode() + body
    Ed25519PublicKey.from_public_bytes(x).verify(base64.b64decode(row["signature"]), signed)
    chain = [row, *doc["chain"]]
    for before, r in zip([None, *chain], chain):
        assert row_hash(r) == r["row_hash"], f"row {r['id']} altered"
        assert before is None or r["prev_hash"] == before["row_hash"], f"row {r['id']} link"
    print("verified", doc["message_id"], "head", chain[-1]["row_hash"])
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
    assert {json.loads(r.message_ids)[0] for r in logged} == {r.message_id for r in sent}
    assert logged[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.row_hash for a, b in itertools.pairwise(logged))
    assert all(r.key_id == kid and r.status == 200 for r in logged)
    first = sent[0].message_id

    monkeypatch.setattr("services.cli.load_settings", lambda: settings)
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
