"""Everything Jokko sends carries its Ed25519 signature, and an institution verifies it with
nothing but Jokko's published JWKS (real broker, real PostgreSQL, the relay pushing to the
fakes over HTTP and writing IPRES files).

The fakes are handed a function that GETs ``/.well-known/jokko-message-keys.json`` from a
running API (as an institution's IT would), or a JWKS document that is not Jokko's (a forger's
key): the latter's 401s are retried, then the deliveries go dead with their reason.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cryptography
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

import adapters.css
from adapters.base import Institution
from router.broker import idempotent_producer
from router.canonical import publish_events
from router.signing import MessageKeys, SigningKey, sign_push
from router.store import DeliveryState, OutboxRow
from schemas import CanonicalEvent
from services import keyring
from services.api.app import create_app
from services.api.routes.message_keys import MESSAGE_KEYS_PATH
from services.bootstrap import Jokko, bootstrap
from services.cli import app as cli
from services.settings import InvalidSettings, Settings
from tests.factories import contributions, enrolments
from tests.fakes.cmu import FakeCMU
from tests.fakes.css import FakeCSS
from tests.fakes.faults import Faults
from tests.fakes.ipres import FakeIPRES
from tests.fakes.server import serve
from tests.integration.test_fakes import translated
from tests.integration.test_router_flow import route_until_idle

# The fakes here serve plain HTTP on loopback (allow_plain_http): signatures are what these
# tests are about; mutual TLS is test_partners_tls.py's.
pytestmark = pytest.mark.integration

CSS_SECRET = "css-shared-secret-for-signing-tests-0123456789"
FAST_RETRIES = {
    "delivery_backoff_initial_s": 0.1,
    "delivery_backoff_max_s": 0.3,
    "delivery_breaker_reset_s": 0.3,
    "relay_batch_size": 50,
}


def rows(app: Jokko, institution: Institution | None = None) -> list[OutboxRow]:
    with Session(app.engine) as s:
        query = select(OutboxRow).order_by(OutboxRow.id)
        if institution is not None:
            query = query.where(OutboxRow.institution == institution)
        return list(s.scalars(query))


def wait(what: Callable[[], bool], timeout_s: float, label: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {label}")
        time.sleep(0.1)


@contextmanager
def relaying(app: Jokko, events: Sequence[CanonicalEvent]) -> Iterator[None]:
    """Publish ``events``, route them, and run the relay until the block ends."""
    producer = idempotent_producer(app.settings.kafka_bootstrap)
    try:
        publish_events(producer, app.topics.canonical, list(events), vault=app.vault)
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
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


@contextmanager
def published_jwks(
    jokko_settings: Callable[..., Settings], keyring_file: Path
) -> Iterator[tuple[str, Callable[[], Mapping[str, Any]], list[str]]]:
    """An API serving the keyring's JWKS; yields its URL, a fetcher that the fakes use (the
    only thing of Jokko they hold) and the list of fetches made."""
    api = bootstrap(jokko_settings(keyring_file=keyring_file), kafka=False)
    fetches: list[str] = []
    try:
        with serve(create_app(api)) as url:

            def fetch() -> Mapping[str, Any]:
                answer = httpx.get(f"{url}{MESSAGE_KEYS_PATH}", timeout=5)
                answer.raise_for_status()
                fetches.append(answer.headers.get("cache-control", ""))
                document: Mapping[str, Any] = answer.json()
                return document

            yield url, fetch, fetches
    finally:
        api.engine.dispose()


def activity(members: int, months: int, seed: str) -> list[CanonicalEvent]:
    return [*enrolments(members), *contributions(members, months, seed=seed)]


def test_the_jwks_endpoint_is_public_and_holds_public_keys_only(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    keyring_file = tmp_path / "keyring.json"
    keyring.create(keyring_file)
    first = keyring.message_keys(keyring_file).current.kid
    second = keyring.rotate(keyring_file, "message")
    with published_jwks(jokko_settings, keyring_file) as (url, _, _):
        answer = httpx.get(f"{url}{MESSAGE_KEYS_PATH}")  # no token
    assert answer.status_code == 200
    keys = answer.json()["keys"]
    assert [k["kid"] for k in keys] == [second, first], "current first, the previous kept"
    assert all(set(k) == {"kty", "crv", "alg", "use", "kid", "x"} for k in keys)
    assert all(k["kty"] == "OKP" and k["crv"] == "Ed25519" for k in keys)
    stored = json.loads(keyring_file.read_text())
    assert set(stored["message"]["keys"]) == {first, second}
    assert keyring_file.stat().st_mode & 0o777 == 0o600


def test_pushes_batches_and_files_verified_with_the_published_jwks_alone(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    keyring_file = tmp_path / "keyring.json"
    keyring.create(keyring_file)
    kid = keyring.message_keys(keyring_file).current.kid
    with published_jwks(jokko_settings, keyring_file) as (_, fetch, fetches):
        cmu = FakeCMU(None, Faults(seed=1), jwks=fetch)  # Ed25519 only: no shared secret
        css = FakeCSS(CSS_SECRET.encode(), Faults(seed=2), jwks=fetch)  # both checked
        ipres = FakeIPRES(tmp_path / "ipres-in", tmp_path / "ipres-acks", Faults(), jwks=fetch)
        with serve(cmu.app) as cmu_url, serve(css.app) as css_url, ipres:
            settings = jokko_settings(
                keyring_file=keyring_file,
                cmu={
                    "mode": "http",
                    "allow_plain_http": True,
                    "url": f"{cmu_url}/fhir",
                    "batch_size": 4,
                },
                css={
                    "mode": "http",
                    "allow_plain_http": True,
                    "url": f"{css_url}/css/v1/documents",
                    "signature": "both",
                    "secret": CSS_SECRET,
                },
                ipres={"mode": "file", "outbox_dir": ipres.inbox, "ack_dir": ipres.acks},
                **FAST_RETRIES,
            )
            app = bootstrap(settings)
            try:
                with relaying(app, activity(members=6, months=2, seed="sign1")):
                    wait(
                        lambda: all(r.state == DeliveryState.ACCEPTED for r in rows(app)),
                        90,
                        "every delivery accepted",
                    )
                delivered = Counter(r.institution for r in rows(app))
            finally:
                app.engine.dispose()
    assert set(delivered) == {"cmu", "css", "ipres"}
    for fake in (cmu, css):
        assert fake.requests.by_status[401] == 0, "no signature refused"
        assert set(fake.recorder.key_ids) == {kid}, "every request names Jokko's key"
    assert cmu.requests.total < delivered["cmu"], "CMU got batches, signed as one request"
    assert sum(cmu.recorder.key_ids.values()) == cmu.requests.total
    assert ipres.files, "IPRES read the declaration files"
    assert ipres.refused_files == 0, "every file's .sig verified"
    signatures = sorted(ipres.processed.glob("*.dat.sig"))
    assert len(signatures) == len(list(ipres.processed.glob("*.dat")))
    assert all(json.loads(s.read_bytes())["kid"] == kid for s in signatures)
    assert fetches, "the fakes fetched the JWKS"
    assert all("max-age" in c for c in fetches), "cacheable"


@pytest.mark.parametrize("forgery", ["unknown_key", "same_kid_other_key"])
def test_a_signature_the_jwks_does_not_verify_is_refused_retried_then_dead(
    jokko_settings: Callable[..., Settings], tmp_path: Path, forgery: str
) -> None:
    """The fake holds a JWKS that is not Jokko's keyring: another kid, or Jokko's kid with an
    impostor's key. Jokko's pushes are refused 401, never applied, retried, then dead."""
    keyring_file = tmp_path / "keyring.json"
    keyring.create(keyring_file)
    kid = keyring.message_keys(keyring_file).current.kid
    impostor = SigningKey(
        "message-impostor" if forgery == "unknown_key" else kid, Ed25519PrivateKey.generate()
    )
    cmu = FakeCMU(None, Faults(), jwks=MessageKeys(impostor).jwks())
    with serve(cmu.app) as cmu_url:
        settings = jokko_settings(
            keyring_file=keyring_file,
            cmu={"mode": "http", "allow_plain_http": True, "url": f"{cmu_url}/fhir"},
            delivery_max_attempts=2,
            **FAST_RETRIES,
        )
        app = bootstrap(settings)
        try:
            with relaying(app, enrolments(3)):
                wait(
                    lambda: all(r.state == DeliveryState.DEAD for r in rows(app, Institution.CMU)),
                    60,
                    "CMU's deliveries dead",
                )
            dead = rows(app, Institution.CMU)
        finally:
            app.engine.dispose()
    assert len(dead) == 3
    assert all("HTTP 401" in (r.last_error or r.reason_text or "") for r in dead), [
        (r.last_error, r.reason_text) for r in dead
    ]
    assert cmu.received == [], "nothing refused was applied"
    assert cmu.requests.by_status[401] >= 2 * len(dead), "retried before going dead"
    assert sum(cmu.recorder.key_ids.values()) == 0


def test_after_rotation_the_previous_key_still_verifies_and_the_new_one_signs(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    keyring_file = tmp_path / "keyring.json"
    keyring.create(keyring_file)
    old = keyring.message_keys(keyring_file).current.kid
    published: list[Callable[[], Mapping[str, Any]]] = []
    cmu = FakeCMU(None, Faults(), jwks=lambda: published[-1]())  # fetched at the first push
    with serve(cmu.app) as cmu_url:
        settings = jokko_settings(
            keyring_file=keyring_file,
            cmu={"mode": "http", "allow_plain_http": True, "url": f"{cmu_url}/fhir"},
        )
        # A relay started before the rotation signs with the old key until it is restarted.
        before = bootstrap(settings.model_copy(update=FAST_RETRIES))
        new = keyring.rotate(keyring_file, "message")
        with published_jwks(jokko_settings, keyring_file) as (_, fetch, _):
            published.append(fetch)  # the API restarted after the rotation: [new, old]
            runs: list[tuple[Callable[[], Jokko], Sequence[CanonicalEvent]]] = [
                (lambda: before, enrolments(2)),
                (lambda: bootstrap(settings.model_copy(update=FAST_RETRIES)), contributions(2, 1)),
            ]
            for started, events in runs:
                app = started()  # the second relay starts after the rotation: the new key
                try:
                    with relaying(app, events):
                        wait(
                            lambda: all(
                                r.state == DeliveryState.ACCEPTED
                                for r in rows(app, Institution.CMU)  # noqa: B023
                            ),
                            60,
                            "CMU's pushes accepted",
                        )
                finally:
                    app.engine.dispose()
                if app is before:
                    assert set(cmu.recorder.key_ids) == {old}
    assert old != new
    assert set(cmu.recorder.key_ids) == {old, new}
    assert cmu.requests.by_status[401] == 0


OFFLINE_VERIFIER = textwrap.dedent(
    """
    # Nothing of Jokko: the JWKS document, the file, its .sig, and `cryptography`.
    import base64, json, sys
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        import router  # noqa: F401
        sys.exit("Jokko is importable here: not an independent verifier")
    except ImportError:
        pass

    def b64url(s):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    jwks, data, sig = sys.argv[1:4]
    keys = {k["kid"]: k for k in json.load(open(jwks))["keys"]}
    detached = json.load(open(sig))
    assert detached["alg"] == "EdDSA"
    key = Ed25519PublicKey.from_public_bytes(b64url(keys[detached["kid"]]["x"]))
    key.verify(b64url(detached["sig"]), open(data, "rb").read())  # raises if not
    print("verified", detached["kid"])
    """
)
ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""DER of an Ed25519 SubjectPublicKeyInfo before its 32 key bytes (RFC 8410)."""


def test_an_ipres_file_verifies_offline_and_not_after_one_changed_byte(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    keyring_file = tmp_path / "keyring.json"
    keyring.create(keyring_file)
    outbox, acks = tmp_path / "outbox", tmp_path / "acks"
    settings = jokko_settings(
        keyring_file=keyring_file,
        ipres={"mode": "file", "outbox_dir": outbox, "ack_dir": acks},
        **FAST_RETRIES,
    )
    app = bootstrap(settings)
    try:
        with relaying(app, enrolments(3)):
            wait(
                lambda: all(r.state == DeliveryState.SENT for r in rows(app, Institution.IPRES)),
                60,
                "the declaration file written",
            )
    finally:
        app.engine.dispose()
    with published_jwks(jokko_settings, keyring_file) as (url, _, _):
        jwks_doc = httpx.get(f"{url}{MESSAGE_KEYS_PATH}").content
    work = tmp_path / "institution"  # not the repository: Jokko is not importable from here
    work.mkdir()
    (work / "jwks.json").write_bytes(jwks_doc)
    (work / "verify.py").write_text(OFFLINE_VERIFIER)
    data = next(outbox.glob("*.dat"))
    sig = data.with_name(data.name + ".sig")
    copy = work / data.name
    shutil.copy(data, copy)

    # Only `cryptography` (and what it loads) on the path: no site-packages, so not the
    # editable install of Jokko either (python -S: no .pth files are read).
    libs = tmp_path / "libs"
    libs.mkdir()
    for name in ("cryptography", "cffi", "_cffi_backend"):
        for found in Path(cryptography.__file__).parent.parent.glob(f"{name}*"):
            if not found.name.endswith(".dist-info"):
                (libs / found.name).symlink_to(found)

    def python_verifies(path: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-S", "verify.py", "jwks.json", str(path), str(sig)]
        env = {"PYTHONPATH": str(libs), "PATH": os.environ.get("PATH", "")}
        return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=60)

    def openssl_verifies(path: Path) -> subprocess.CompletedProcess[str]:
        detached = json.loads(sig.read_bytes())
        (work / "sig.bin").write_bytes(_b64url(detached["sig"]))
        x = next(k["x"] for k in json.loads(jwks_doc)["keys"] if k["kid"] == detached["kid"])
        der = ED25519_SPKI_PREFIX + _b64url(x)
        (work / "pub.pem").write_text(
            "-----BEGIN PUBLIC KEY-----\n"
            + base64.b64encode(der).decode()
            + "\n-----END PUBLIC KEY-----\n"
        )
        argv = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin"]
        argv += ["-in", str(path), "-sigfile", "sig.bin"]
        return subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=60)

    good = python_verifies(copy)
    assert good.returncode == 0, good.stderr
    assert "verified" in good.stdout
    assert openssl_verifies(copy).returncode == 0
    content = bytearray(copy.read_bytes())
    content[len(content) // 2] ^= 0x01  # one bit of one byte
    copy.write_bytes(bytes(content))
    bad = python_verifies(copy)
    assert bad.returncode != 0
    assert "InvalidSignature" in bad.stderr
    assert openssl_verifies(copy).returncode != 0


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_jokko_keys_rotate_message_and_a_keyring_from_before_gains_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keyring made before message keys existed gets exactly one at start (several processes
    starting together agree on it); the CLI rotates it and lists ids, never key material."""
    path = tmp_path / "keyring.json"
    keyring.create(path)
    legacy = json.loads(path.read_text())
    del legacy["message"]
    path.write_text(json.dumps(legacy))
    with pytest.raises(InvalidSettings, match="jokko keys rotate message"):
        keyring.message_keys(path)
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(keyring.message_keys(path, create=True).current.kid)
        )
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1, "every process signs with the same key"
    assert json.loads(path.read_text())["data"] == legacy["data"], "other keys untouched"

    monkeypatch.setenv("JOKKO_KEYRING_FILE", str(path))
    runner = CliRunner()
    rotated = runner.invoke(cli, ["keys", "rotate", "message"])
    assert rotated.exit_code == 0, rotated.output
    keys = keyring.message_keys(path)
    assert keys.current.kid != results[0]
    assert keys.current.kid in rotated.stdout
    assert [k.kid for k in keys.previous] == [results[0]]
    listed = runner.invoke(cli, ["keys", "list"])
    assert listed.exit_code == 0, listed.output
    assert keys.current.kid in listed.stdout
    assert results[0] in listed.stdout
    seed = json.loads(path.read_text())["message"]["keys"][keys.current.kid]
    assert seed not in listed.stdout


def test_ipres_refuses_a_file_whose_signature_its_jwks_does_not_verify(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """IPRES holds a JWKS naming Jokko's kid with an impostor's key: it reads no record of the
    file, answers why, and Jokko's deliveries stay sent (never accepted)."""
    keyring_file = tmp_path / "keyring.json"
    keyring.create(keyring_file)
    kid = keyring.message_keys(keyring_file).current.kid
    impostor = MessageKeys(SigningKey(kid, Ed25519PrivateKey.generate())).jwks()
    ipres = FakeIPRES(tmp_path / "in", tmp_path / "acks", Faults(), jwks=impostor)
    with ipres:
        settings = jokko_settings(
            keyring_file=keyring_file,
            ipres={"mode": "file", "outbox_dir": ipres.inbox, "ack_dir": ipres.acks},
            **FAST_RETRIES,
        )
        app = bootstrap(settings)
        try:
            with relaying(app, enrolments(3)):
                wait(lambda: ipres.refused_files > 0, 60, "the file refused")
                wait(lambda: any(ipres.acks.glob("*.err")), 10, "IPRES's answer")
                time.sleep(1)  # an ack, had one been written, would have been applied by now
                states = {r.state for r in rows(app, Institution.IPRES)}
        finally:
            app.engine.dispose()
    assert states == {DeliveryState.SENT}
    assert ipres.received == [], "no record of a refused file is read"
    assert not list(ipres.acks.glob("*.ack"))
    answer = next(ipres.acks.glob("*.err")).read_text()
    assert answer == "signature refused: bad_signature"


def test_a_fake_refuses_an_altered_replayed_or_stale_push_and_applies_nothing() -> None:
    """Over real HTTP, with only the JWKS: what an attacker on the path could try."""

    jokko_key = SigningKey("message-1", Ed25519PrivateKey.generate())
    css = FakeCSS(None, Faults(), jwks=MessageKeys(jokko_key).jwks())
    [message] = translated(adapters.css, enrolments(1))
    now = int(time.time())

    def push(body: bytes, timestamp: int, key: SigningKey = jokko_key) -> httpx.Response:
        headers = sign_push(message.message_id, message.body, timestamp=timestamp, key=key)
        headers["content-type"] = message.content_type
        return client.post("/css/v1/documents", content=body, headers=headers)

    with serve(css.app) as url, httpx.Client(base_url=url, timeout=10) as client:
        altered = message.body.replace(b"<", b"< ", 1)
        assert push(altered, now).status_code == 401
        assert push(message.body, now - 3600).status_code == 401  # stale
        impostor = SigningKey("message-1", Ed25519PrivateKey.generate())
        assert push(message.body, now, key=impostor).status_code == 401
        assert css.received == [], "nothing refused was applied"
        assert push(message.body, now).status_code == 200
        assert push(message.body, now).status_code == 401  # the same request again: a replay
        assert push(message.body, now + 1).status_code == 200  # Jokko's re-send: a new attempt
    assert [r.resent for r in css.received] == [False, True], "applied once"
    assert css.requests.by_status[401] == 4
