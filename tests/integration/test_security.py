"""API security against a real (SQLite) store: tokens, revocation, rotation, the audit log, the
FastAPI dependencies and token endpoint, and the ``jokko clients`` / ``jokko keys`` commands."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI, HTTPException
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from adapters.base import Institution
from router.db import make_engine
from router.migrate import upgrade
from router.sealing import rewrap
from router.store import AuditRow, ClientRow
from router.vault import Keyring, KeySet, Vault, new_key
from services import keyring
from services.api import problems
from services.api.auth import (
    JWKS_PATH,
    TOKEN_PATH,
    AuthError,
    Authority,
    ClientAdminError,
    Principal,
    PrincipalDep,
    RateLimiter,
    Scope,
    SigningKeyUnavailable,
    require,
    secret_matches,
    security_router,
)
from services.api.auth.keys import new_key_row as _new_key_row
from services.cli import app as cli

pytestmark = pytest.mark.integration

OPERATOR = [Scope.DELIVERIES_READ, Scope.DEAD_LETTERS, Scope.EVENTS_READ]


class Clock:
    """Starts at the real time, so third-party JWT libraries agree with it."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated database, copied for each test (migrating each time costs more)."""
    path = tmp_path_factory.mktemp("template") / "jokko.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def engine(migrated: Path, tmp_path: Path) -> Iterator[Engine]:
    for f in migrated.parent.glob(migrated.name + "*"):
        shutil.copy(f, tmp_path / f.name)
    e = make_engine(f"sqlite:///{tmp_path / migrated.name}")
    yield e
    e.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(engine: Engine, clock: Clock) -> Authority:
    return Authority(engine, clock=clock)


def _audit(engine: Engine) -> list[tuple[str, str, str | None, str | None]]:
    with Session(engine) as s:
        rows = s.scalars(select(AuditRow).order_by(AuditRow.id)).all()
        return [(r.actor, r.action, r.target, r.detail) for r in rows]


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    header, payload, signature = token.split(".")
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
        signature,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], payload: dict[str, Any], sign: Any) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


# --- the authority ----------------------------------------------------------------------------


def test_token_round_trip(authority: Authority) -> None:
    secret = authority.add_client("msnas", [Scope.EVENTS_SUBMIT, Scope.EVENTS_READ])
    answer = authority.issue_token("msnas", secret)
    assert answer.token_type == "Bearer"
    assert answer.expires_in == 300
    assert answer.scope == "events:read events:submit"
    who = authority.verify(answer.access_token)
    assert who == Principal("msnas", frozenset({"events:submit", "events:read"}), None)
    header, claims, _ = _segments(answer.access_token)
    assert header["alg"] == "ES256"
    assert header["typ"] == "at+jwt"
    assert claims["exp"] - claims["iat"] == 300
    assert (claims["iss"], claims["aud"], claims["sub"]) == ("jokko", "jokko-api", "msnas")


def test_a_partner_verifies_tokens_with_the_jwks_alone(authority: Authority) -> None:
    secret = authority.add_client("css-prod", [Scope.ACKS_WRITE], institution=Institution.CSS)
    token = authority.issue_token("css-prod", secret).access_token
    (jwk,) = authority.jwks()["keys"]
    assert "d" not in jwk  # public part only
    assert jwk["kid"] == jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(
        token, jwt.PyJWK(jwk).key, algorithms=["ES256"], audience="jokko-api", issuer="jokko"
    )
    assert claims["institution"] == "css"


def test_an_institution_client_is_bound_to_its_institution(authority: Authority) -> None:
    secret = authority.add_client(
        "css-prod", [Scope.DELIVERIES_READ, Scope.ACKS_WRITE], institution=Institution.CSS
    )
    who = authority.verify(authority.issue_token("css-prod", secret).access_token)
    assert who.institution is Institution.CSS
    assert who.may_see("css")
    assert not who.may_see(Institution.CMU)


def test_wrong_secret_and_unknown_client_are_refused_alike(authority: Authority) -> None:
    secret = authority.add_client("msnas", [Scope.EVENTS_SUBMIT])
    refusals = []
    for client_id, attempt in [("msnas", secret[:-1]), ("msnas", ""), ("nobody", secret)]:
        with pytest.raises(AuthError) as caught:
            authority.issue_token(client_id, attempt)
        refusals.append((caught.value.status, caught.value.code, caught.value.message))
    assert len(set(refusals)) == 1
    assert refusals[0][:2] == (401, "invalid_client")


def test_a_revoked_client_gets_no_token_and_its_tokens_stop_working(authority: Authority) -> None:
    secret = authority.add_client("msnas", [Scope.EVENTS_SUBMIT])
    token = authority.issue_token("msnas", secret).access_token
    authority.verify(token)
    authority.revoke_client("msnas")
    with pytest.raises(AuthError, match="invalid or expired") as caught:
        authority.verify(token)
    assert caught.value.status == 401
    with pytest.raises(AuthError) as refused:
        authority.issue_token("msnas", secret)
    assert refused.value.code == "invalid_client"
    authority.revoke_client("msnas")  # idempotent


def test_a_revocation_reaches_other_api_processes_within_seconds(
    engine: Engine, clock: Clock
) -> None:
    here, there = Authority(engine, clock=clock), Authority(engine, clock=clock)
    secret = here.add_client("msnas", [Scope.EVENTS_SUBMIT])
    token = here.issue_token("msnas", secret).access_token
    there.verify(token)
    here.revoke_client("msnas")
    clock.t += 6
    with pytest.raises(AuthError):
        there.verify(token)


def test_requested_scopes_must_be_a_subset(authority: Authority) -> None:
    secret = authority.add_client("ops", OPERATOR)
    narrow = authority.issue_token("ops", secret, scope="deliveries:read")
    assert narrow.scope == "deliveries:read"
    assert authority.verify(narrow.access_token).scopes == {"deliveries:read"}
    for scope in ("deliveries:read events:submit", "clients:admin", "no-such-scope"):
        with pytest.raises(AuthError) as caught:
            authority.issue_token("ops", secret, scope=scope)
        assert (caught.value.status, caught.value.code) == (400, "invalid_scope")


def test_an_expired_token_is_refused(authority: Authority, clock: Clock) -> None:
    secret = authority.add_client("msnas", [Scope.EVENTS_SUBMIT])
    token = authority.issue_token("msnas", secret).access_token
    clock.t += 299
    authority.verify(token)
    clock.t += 1
    with pytest.raises(AuthError):
        authority.verify(token)


def test_a_token_from_the_future_is_refused(authority: Authority, clock: Clock) -> None:
    secret = authority.add_client("msnas", [Scope.EVENTS_SUBMIT])
    clock.t += 3600
    token = authority.issue_token("msnas", secret).access_token
    clock.t -= 3600
    with pytest.raises(AuthError):
        authority.verify(token)


def test_a_tampered_token_is_refused(authority: Authority) -> None:
    secret = authority.add_client("css-prod", [Scope.ACKS_WRITE], institution=Institution.CSS)
    token = authority.issue_token("css-prod", secret).access_token
    _, claims, signature = _segments(token)
    escalated = {**claims, "scope": "acks:write dead_letters:manage", "sub": "ops"}
    forged = ".".join([token.split(".")[0], _b64(json.dumps(escalated).encode()), signature])
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (forged, flipped, token + "x", "", "a.b.c", "not a token", "x" * 10_000):
        with pytest.raises(AuthError):
            authority.verify(bad)


def test_unsigned_and_hmac_tokens_are_refused(authority: Authority, clock: Clock) -> None:
    secret = authority.add_client("ops", OPERATOR)
    token = authority.issue_token("ops", secret).access_token
    header, claims, _ = _segments(token)
    (jwk,) = authority.jwks()["keys"]
    public_pem = jwt.PyJWK(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    none = _forge({**header, "alg": "none"}, claims, lambda _: b"")
    hs_pem = _forge(
        {**header, "alg": "HS256"},
        claims,
        lambda m: hmac.new(public_pem, m, hashlib.sha256).digest(),
    )
    hs_jwk = _forge(
        {**header, "alg": "HS256"},
        claims,
        lambda m: hmac.new(json.dumps(jwk).encode(), m, hashlib.sha256).digest(),
    )
    for bad in (none, none.rsplit(".", 1)[0] + ".", hs_pem, hs_jwk):
        with pytest.raises(AuthError):
            authority.verify(bad)


def test_a_token_signed_by_a_foreign_key_under_our_kid_is_refused(authority: Authority) -> None:
    secret = authority.add_client("ops", OPERATOR)
    header, claims, _ = _segments(authority.issue_token("ops", secret).access_token)
    foreign = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, foreign, algorithm="ES256", headers={"kid": header["kid"]})
    with pytest.raises(AuthError):
        authority.verify(forged)
    unknown_kid = jwt.encode(claims, foreign, algorithm="ES256", headers={"kid": "mine"})
    with pytest.raises(AuthError):
        authority.verify(unknown_kid)


def test_tokens_for_another_audience_or_issuer_are_refused(
    engine: Engine, authority: Authority, clock: Clock
) -> None:
    secret = authority.add_client("ops", OPERATOR)
    for other in (
        Authority(engine, audience="other-api", clock=clock),
        Authority(engine, issuer="someone-else", clock=clock),
    ):
        with pytest.raises(AuthError):
            authority.verify(other.issue_token("ops", secret).access_token)


def test_rotation_keeps_old_tokens_valid_until_they_expire(
    authority: Authority, engine: Engine, clock: Clock
) -> None:
    secret = authority.add_client("ops", OPERATOR)
    assert authority.jwks() == {"keys": []}  # the first key is created lazily
    old = authority.issue_token("ops", secret).access_token
    old_kid = jwt.get_unverified_header(old)["kid"]
    clock.t += 10
    new_kid = authority.rotate(actor="ops-admin")
    assert new_kid != old_kid
    new = authority.issue_token("ops", secret).access_token
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    assert [k["kid"] for k in authority.jwks()["keys"]] == [new_kid, old_kid]
    authority.verify(old)
    # Another API process, which never saw the rotation, verifies and signs with the new key.
    elsewhere = Authority(engine, clock=clock)
    elsewhere.verify(old)
    elsewhere.verify(new)
    assert jwt.get_unverified_header(elsewhere.issue_token("ops", secret).access_token)["kid"] == (
        new_kid
    )
    clock.t += 300
    assert [k["kid"] for k in authority.jwks()["keys"]] == [new_kid]
    with pytest.raises(AuthError):
        authority.verify(old)
    authority.verify(authority.issue_token("ops", secret).access_token)


def test_a_rotation_elsewhere_reaches_this_processs_jwks(engine: Engine, clock: Clock) -> None:
    here, there = Authority(engine, clock=clock), Authority(engine, clock=clock)
    here.issue_token("ops", here.add_client("ops", OPERATOR))
    (first,) = here.jwks()["keys"]
    clock.t += 1
    second = there.rotate()
    assert [k["kid"] for k in here.jwks()["keys"]] == [second, first["kid"]]


def test_secrets_are_stored_only_as_hashes(authority: Authority, engine: Engine) -> None:
    secret = authority.add_client("msnas", [Scope.EVENTS_SUBMIT])
    with Session(engine) as s:
        row = s.get_one(ClientRow, "msnas")
    assert secret not in row.secret_hash
    assert secret_matches(secret, row.secret_hash)
    assert len(secret) >= 43  # 256 random bits


def test_client_and_key_changes_are_audited(authority: Authority, engine: Engine) -> None:
    secret = authority.add_client(
        "css-prod", [Scope.ACKS_WRITE], institution=Institution.CSS, actor="cli:awa"
    )
    authority.revoke_client("css-prod", actor="cli:awa")
    kid = authority.rotate(actor="cli:moussa")
    authority.audit("ops", "dead_letter.replay", "dead_letter:12", "replayed")
    assert _audit(engine) == [
        ("cli:awa", "client.add", "css-prod", "scopes=acks:write institution=css"),
        ("cli:awa", "client.revoke", "css-prod", None),
        ("cli:moussa", "key.rotate", kid, None),
        ("ops", "dead_letter.replay", "dead_letter:12", "replayed"),
    ]
    assert all(secret not in str(row) for row in _audit(engine))


def test_the_lazy_first_key_is_audited(authority: Authority, engine: Engine) -> None:
    secret = authority.add_client("msnas", [Scope.EVENTS_SUBMIT])
    token = authority.issue_token("msnas", secret).access_token
    assert _audit(engine)[-1] == (
        "system",
        "key.create",
        jwt.get_unverified_header(token)["kid"],
        None,
    )


@pytest.mark.parametrize(
    ("client_id", "scopes", "institution", "reason"),
    [
        ("has space", [Scope.EVENTS_SUBMIT], None, "client id"),
        ("x" * 65, [Scope.EVENTS_SUBMIT], None, "client id"),
        ("ok", [], None, "scopes must be"),
        ("ok", ["events:delete"], None, "scopes must be"),
        ("ok", [Scope.DEAD_LETTERS], Institution.CSS, "institution's client may only"),
        ("ok", [Scope.EVENTS_SUBMIT], Institution.CMU, "institution's client may only"),
    ],
)
def test_bad_client_definitions_are_refused(
    authority: Authority,
    client_id: str,
    scopes: list[str],
    institution: Institution | None,
    reason: str,
) -> None:
    with pytest.raises(ClientAdminError, match=reason):
        authority.add_client(client_id, scopes, institution=institution)


def test_duplicate_and_unknown_clients(authority: Authority) -> None:
    authority.add_client("msnas", [Scope.EVENTS_SUBMIT])
    with pytest.raises(ClientAdminError, match="already exists"):
        authority.add_client("msnas", [Scope.EVENTS_READ])
    with pytest.raises(ClientAdminError, match="no client"):
        authority.revoke_client("nobody")
    assert [c.client_id for c in authority.clients()] == ["msnas"]


# --- FastAPI ----------------------------------------------------------------------------------

RECORDS = {("cmu", "m-1"): "cmu record", ("css", "m-2"): "css record"}


def _app(authority: Authority, limiter: RateLimiter | None = None) -> FastAPI:
    app = FastAPI()
    app.state.authority = authority
    if limiter is not None:
        app.state.rate_limiter = limiter
    app.include_router(security_router())

    @app.get("/v1/whoami")
    def whoami(who: PrincipalDep) -> dict[str, str]:
        return {"client_id": who.client_id}

    @app.get("/v1/deliveries/{institution}/{message_id}")
    def delivery(
        institution: str,
        message_id: str,
        who: Annotated[Principal, require(Scope.DELIVERIES_READ)],
    ) -> dict[str, str]:
        record = RECORDS.get((institution, message_id))
        if record is None or not who.may_see(institution):
            raise HTTPException(404, "no such delivery")
        return {"record": record}

    @app.post("/v1/dead-letters/{dl_id}/replay")
    def replay(
        dl_id: int,
        who: Annotated[Principal, require(Scope.DEAD_LETTERS)],
        also: Annotated[Principal, require(Scope.DELIVERIES_READ)],
    ) -> dict[str, str]:
        authority.audit(who.client_id, "dead_letter.replay", f"dead_letter:{dl_id}")
        return {"outcome": "replayed"}

    return app


class Api:
    """A synchronous client over httpx's ASGI transport (starlette's TestClient now warns)
    that remembers every answer, to check none leaks a secret."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.bodies: list[str] = []

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.ASGITransport(app=self.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, url, **kwargs)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = asyncio.run(self._send(method, url, **kwargs))
        self.bodies.append(response.text + json.dumps(dict(response.headers)))
        return response

    def token(self, client_id: str, secret: str, **form: str) -> str:
        response = self.request(
            "POST",
            TOKEN_PATH,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                **form,
            },
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def test_requests_without_a_valid_token_get_401_with_a_challenge(authority: Authority) -> None:
    api = Api(_app(authority))
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Basic bXNuYXM6eA=="},
        {"Authorization": "bearer a.b.c"},
    ):
        response = api.request("GET", "/v1/whoami", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "Traceback" not in response.text


def test_a_missing_scope_gets_403(authority: Authority) -> None:
    api = Api(_app(authority))
    secret = authority.add_client("css-prod", [Scope.ACKS_WRITE], institution=Institution.CSS)
    token = api.token("css-prod", secret)
    response = api.request("GET", "/v1/deliveries/css/m-2", headers=_bearer(token))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert 'scope="deliveries:read"' in response.headers["WWW-Authenticate"]
    assert api.request("GET", "/v1/whoami", headers=_bearer(token)).json() == {
        "client_id": "css-prod"
    }


def test_another_institutions_records_look_like_they_do_not_exist(authority: Authority) -> None:
    api = Api(_app(authority))
    css = api.token(
        "css-prod",
        authority.add_client("css-prod", [Scope.DELIVERIES_READ], institution=Institution.CSS),
    )
    ops = api.token("ops", authority.add_client("ops", OPERATOR))
    own = api.request("GET", "/v1/deliveries/css/m-2", headers=_bearer(css))
    assert own.json() == {"record": "css record"}
    others = api.request("GET", "/v1/deliveries/cmu/m-1", headers=_bearer(css))
    missing = api.request("GET", "/v1/deliveries/cmu/m-404", headers=_bearer(css))
    assert others.status_code == missing.status_code == 404
    assert others.text == missing.text
    assert api.request("GET", "/v1/deliveries/cmu/m-1", headers=_bearer(ops)).status_code == 200


def test_token_endpoint_form_and_basic_auth(authority: Authority) -> None:
    api = Api(_app(authority))
    secret = authority.add_client("ops", OPERATOR)
    form = api.request(
        "POST",
        TOKEN_PATH,
        data={"grant_type": "client_credentials", "client_id": "ops", "client_secret": secret},
    )
    assert form.status_code == 200
    assert form.headers["Cache-Control"] == "no-store"
    assert form.json()["token_type"] == "Bearer"
    assert form.json()["expires_in"] == 300
    basic = api.request(
        "POST",
        TOKEN_PATH,
        data={"grant_type": "client_credentials", "scope": "dead_letters:manage"},
        headers=_basic("ops", secret),
    )
    assert basic.status_code == 200
    assert basic.json()["scope"] == "dead_letters:manage"
    for answer in (form, basic):
        response = api.request("GET", "/v1/whoami", headers=_bearer(answer.json()["access_token"]))
        assert response.json() == {"client_id": "ops"}


def test_token_endpoint_errors_follow_rfc_6749(authority: Authority) -> None:
    api = Api(_app(authority))
    secret = authority.add_client("ops", OPERATOR)
    good = {"grant_type": "client_credentials", "client_id": "ops", "client_secret": secret}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"data": {**good, "client_secret": "wrong"}}, 401, "invalid_client"),
        ({"data": {**good, "client_id": "nobody"}}, 401, "invalid_client"),
        (
            {"data": {"grant_type": "client_credentials"}, "headers": _basic("ops", "wrong")},
            401,
            "invalid_client",
        ),
        ({"data": {**good, "scope": "clients:admin"}}, 400, "invalid_scope"),
        ({"data": {**good, "grant_type": "password"}}, 400, "unsupported_grant_type"),
        ({"data": {k: v for k, v in good.items() if k != "grant_type"}}, 400, "invalid_request"),
        ({"data": {"grant_type": "client_credentials"}}, 400, "invalid_request"),
        ({"json": good}, 400, "invalid_request"),
        ({"data": good, "headers": _basic("ops", secret)}, 400, "invalid_request"),
        (
            {"data": {"grant_type": "client_credentials", "client_id": "other"}}
            | {"headers": _basic("ops", secret)},
            400,
            "invalid_request",
        ),
        (
            {
                "content": f"grant_type=client_credentials&client_id=ops&client_id=x"
                f"&client_secret={secret}",
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            400,
            "invalid_request",
        ),
        (
            {
                "content": "grant_type=client_credentials",
                "headers": {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Authorization": "Basic !!!",
                },
            },
            400,
            "invalid_request",
        ),
    ]
    for kwargs, status, error in cases:
        response = api.request("POST", TOKEN_PATH, **kwargs)
        assert (response.status_code, response.json()["error"]) == (status, error), kwargs
        assert response.headers["Cache-Control"] == "no-store"
        assert set(response.json()) <= {"error", "error_description"}
        if status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert all(secret not in body for body in api.bodies)


def test_jwks_is_served(authority: Authority) -> None:
    api = Api(_app(authority))
    api.token("ops", authority.add_client("ops", OPERATOR))
    response = api.request("GET", JWKS_PATH)
    assert response.status_code == 200
    (key,) = response.json()["keys"]
    assert {key["kty"], key["crv"], key["alg"], key["use"]} == {"EC", "P-256", "ES256", "sig"}
    assert "d" not in key


def test_no_error_body_or_log_line_leaks_a_secret_or_token(
    authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = Api(_app(authority))
    secret = authority.add_client("css-prod", [Scope.ACKS_WRITE], institution=Institution.CSS)
    token = api.token("css-prod", secret)
    api.request(
        "POST",
        TOKEN_PATH,
        data={"grant_type": "client_credentials"},
        headers=_basic("css-prod", secret + "x"),
    )
    api.request(
        "POST",
        TOKEN_PATH,
        data={"grant_type": "client_credentials", "scope": "dead_letters:manage"},
        headers=_basic("css-prod", secret),
    )
    api.request("GET", "/v1/deliveries/cmu/m-1", headers=_bearer(token))
    api.request("POST", "/v1/dead-letters/1/replay", headers=_bearer(token))
    api.request("GET", "/v1/whoami", headers=_bearer(token[:-3]))
    authority.revoke_client("css-prod")
    api.request("GET", "/v1/whoami", headers=_bearer(token))
    errors = api.bodies[1:]
    assert all(secret not in body and token not in body for body in errors)
    assert all(token[:-3] not in body for body in errors)
    assert secret not in caplog.text
    assert token[:-3] not in caplog.text


def test_rate_limit_per_client_with_retry_after(authority: Authority) -> None:
    clock = Clock()
    api = Api(_app(authority, RateLimiter(rate=0.5, burst=2, clock=clock)))
    ops_secret = authority.add_client("ops", OPERATOR)
    ops = api.token("ops", ops_secret)
    msnas = api.token("msnas", authority.add_client("msnas", [Scope.EVENTS_SUBMIT]))
    # Two requires on one route take one token only.
    assert api.request("POST", "/v1/dead-letters/1/replay", headers=_bearer(ops)).status_code == 200
    assert api.request("GET", "/v1/whoami", headers=_bearer(ops)).status_code == 200
    limited = api.request("GET", "/v1/whoami", headers=_bearer(ops))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert api.request("GET", "/v1/whoami", headers=_bearer(msnas)).status_code == 200
    clock.t += 2
    assert api.request("GET", "/v1/whoami", headers=_bearer(ops)).status_code == 200
    # The token endpoint is limited per client too (scrypt is deliberately costly): its bucket
    # is full again (2), two wrong guesses empty it.
    for _ in range(2):
        wrong = _basic("ops", "x")
        api.request("POST", TOKEN_PATH, data={"grant_type": "client_credentials"}, headers=wrong)
    refused = api.request(
        "POST",
        TOKEN_PATH,
        data={"grant_type": "client_credentials"},
        headers=_basic("ops", ops_secret),
    )
    assert refused.status_code == 429
    assert "Retry-After" in refused.headers


def test_replays_through_the_api_are_audited(authority: Authority, engine: Engine) -> None:
    api = Api(_app(authority))
    ops = api.token("ops", authority.add_client("ops", OPERATOR, actor="cli:awa"))
    assert api.request("POST", "/v1/dead-letters/7/replay", headers=_bearer(ops)).status_code == 200
    assert _audit(engine)[-1] == ("ops", "dead_letter.replay", "dead_letter:7", None)


def test_openapi_declares_the_client_credentials_flow_and_scopes(authority: Authority) -> None:
    spec = Api(_app(authority)).request("GET", "/openapi.json").json()
    scheme = spec["components"]["securitySchemes"]["OAuth2ClientCredentials"]
    assert scheme["flows"]["clientCredentials"]["tokenUrl"] == TOKEN_PATH
    operation = spec["paths"]["/v1/deliveries/{institution}/{message_id}"]["get"]
    assert operation["security"] == [{"OAuth2ClientCredentials": ["deliveries:read"]}]


# --- signing keys sealed in the store --------------------------------------------------------


def _vault(kid: str = "data-1") -> Vault:
    keys = KeySet(kid, {kid: new_key()})
    return Vault(Keyring(data=keys, token=keys))


def _stored_keys(engine: Engine) -> dict[str, bytes]:
    """The ``signing_key`` table as a raw read sees it."""
    with engine.connect() as conn:
        return {
            kid: bytes(pem)
            for kid, pem in conn.execute(text("SELECT kid, private_pem FROM signing_key"))
        }


def _key_bytes(authority: Authority, kid: str) -> list[bytes]:
    """The private key as it could appear: its scalar, its DER and its PEM."""
    private = authority._keys[kid].private
    scalar = private.private_numbers().private_value.to_bytes(32, "big")
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return [scalar, der, base64.b64encode(der)[:64]]


def test_signing_keys_are_sealed_in_the_store_and_shared_by_replicas(
    store: Engine, clock: Clock
) -> None:
    vault = _vault()
    here = Authority(store, vault=vault, clock=clock)
    there = Authority(store, vault=vault, clock=clock)  # another API process, same keyring
    secret = here.add_client("mutual", [Scope.EVENTS_SUBMIT])
    token = here.issue_token("mutual", secret).access_token
    (kid, pem), *others = _stored_keys(store).items()
    assert not others
    assert b"BEGIN" not in pem
    assert b"PRIVATE KEY" not in pem
    assert not any(part in pem for part in _key_bytes(here, kid))
    assert vault.sealed_under(pem) == "data-1"
    assert there.verify(token).client_id == "mutual"
    assert here.verify(there.issue_token("mutual", secret).access_token).client_id == "mutual"
    assert there.jwks() == here.jwks()
    new = there.rotate(actor="cli:awa")  # `jokko keys rotate signing`, unchanged
    assert here.verify(here.issue_token("mutual", secret).access_token)
    assert _segments(here.issue_token("mutual", secret).access_token)[0]["kid"] == new
    assert all(vault.sealed_under(p) == "data-1" for p in _stored_keys(store).values())


def test_a_legacy_clear_signing_key_still_works_and_is_sealed(store: Engine, clock: Clock) -> None:
    """Rows from before sealing: used as they are, sealed when loaded or by ``rewrap``, and
    re-sealed under the new data key after a rotation of the keyring."""
    legacy = Authority(store, clock=clock)  # no vault: keys in clear, as before
    secret = legacy.add_client("mutual", [Scope.EVENTS_SUBMIT])
    old_token = legacy.issue_token("mutual", secret).access_token
    [first] = _stored_keys(store)
    assert b"BEGIN PRIVATE KEY" in _stored_keys(store)[first]
    vault = _vault()
    rewrapped = rewrap(store, vault)
    assert rewrapped["signing keys"] == 1
    assert vault.sealed_under(_stored_keys(store)[first]) == "data-1"
    assert rewrap(store, vault)["signing keys"] == 0  # safe to run again
    sealed = Authority(store, vault=vault, clock=clock)
    assert sealed.verify(old_token).client_id == "mutual"
    clock.t += 2  # an older process, still writing in clear, makes the next key
    legacy_row = _new_key_row(datetime.fromtimestamp(clock.t, UTC))
    second = legacy_row.kid
    with Session(store) as session, session.begin():
        session.add(legacy_row)
    assert b"BEGIN PRIVATE KEY" in _stored_keys(store)[second]
    newer = sealed.issue_token("mutual", secret).access_token
    assert _segments(newer)[0]["kid"] == second
    assert sealed.verify(newer).client_id == "mutual"
    assert vault.sealed_under(_stored_keys(store)[second]) == "data-1"  # sealed when loaded
    rotated = Vault(Keyring(KeySet("data-2", {**vault.keyring.data.keys, "data-2": new_key()}),
                            vault.keyring.token))  # fmt: skip
    assert rewrap(store, rotated)["signing keys"] == 2
    assert {rotated.sealed_under(p) for p in _stored_keys(store).values()} == {"data-2"}
    assert Authority(store, vault=rotated, clock=clock).verify(old_token)


def test_another_keyring_cannot_open_the_signing_keys(
    store: Engine, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    ours = Authority(store, vault=_vault(), clock=clock)
    secret = ours.add_client("ops", OPERATOR)
    token = ours.issue_token("ops", secret).access_token
    foreign = Authority(store, vault=_vault("data-elsewhere"), clock=clock)
    with pytest.raises(SigningKeyUnavailable, match="cannot be opened with this process"):
        foreign.verify(token)
    with pytest.raises(SigningKeyUnavailable):
        foreign.issue_token("ops", secret)
    with pytest.raises(SigningKeyUnavailable, match="no keyring"):
        Authority(store, clock=clock).jwks()
    app = _app(foreign)
    problems.install(app)
    api = Api(app)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        issued = api.request(
            "POST",
            TOKEN_PATH,
            data={"grant_type": "client_credentials", "client_id": "ops", "client_secret": secret},
        )
        keys = api.request("GET", JWKS_PATH)
        whoami = api.request("GET", "/v1/whoami", headers=_bearer(token))
    assert issued.status_code == 503
    assert issued.json()["error"] == "temporarily_unavailable"
    assert "keyring" in issued.json()["error_description"]
    for answer in (keys, whoami):
        assert answer.status_code == 503
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert "cannot be opened with this process's keyring" in answer.json()["detail"]
    assert all(r.exc_info is None for r in caplog.records)  # refused, no traceback
    assert any("cannot be opened" in r.getMessage() for r in caplog.records)
    assert not any("unexpected" in r.getMessage() for r in caplog.records)
    assert all(secret not in body and "PRIVATE" not in body for body in api.bodies)
    assert ours.verify(token).client_id == "ops"  # the right keyring still does


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_adds_lists_and_revokes_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("JOKKO_DATABASE_URL", url)
    monkeypatch.setenv("JOKKO_KEYRING_FILE", str(tmp_path / "keyring.json"))
    runner = CliRunner()
    added = runner.invoke(
        cli,
        [
            "clients", "add", "css-prod",
            "--scope", "deliveries:read", "--scope", "acks:write",
            "--institution", "css", "--description", "CSS production",
        ],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    secret = added.stdout.split("client_secret: ")[1].split()[0]
    engine = make_engine(url)
    try:
        vault = Vault(keyring.load(tmp_path / "keyring.json"))  # the CLI's own keyring
        authority = Authority(engine, vault=vault)
        assert authority.verify(authority.issue_token("css-prod", secret).access_token)
        listed = runner.invoke(cli, ["clients", "list"])
        assert listed.exit_code == 0
        assert "css-prod" in listed.stdout
        assert "acks:write deliveries:read" in listed.stdout
        assert "active" in listed.stdout
        assert secret not in listed.output
        assert "scrypt" not in listed.output
        bad = runner.invoke(
            cli, ["clients", "add", "x", "--scope", "dead_letters:manage", "--institution", "css"]
        )
        assert bad.exit_code == 1
        assert runner.invoke(cli, ["clients", "revoke", "css-prod"]).exit_code == 0
        assert "revoked" in runner.invoke(cli, ["clients", "list"]).stdout
        assert runner.invoke(cli, ["clients", "revoke", "nobody"]).exit_code == 1
        with pytest.raises(AuthError):
            authority.issue_token("css-prod", secret)
        rotated = runner.invoke(cli, ["keys", "rotate", "signing"])
        assert rotated.exit_code == 0
        kid = rotated.stdout.split()[-1]
        assert Authority(engine, vault=vault).jwks()["keys"][0]["kid"] == kid  # its own process
        actions = [a[1] for a in _audit(engine)]
        assert actions == ["client.add", "key.create", "client.revoke", "key.rotate"]
        actors = {action: actor for actor, action, *_ in _audit(engine)}
        assert actors["key.create"] == "system"  # the first token's key, made lazily
        assert all(
            actors[a].startswith("cli") for a in ("client.add", "client.revoke", "key.rotate")
        )
    finally:
        engine.dispose()
