"""Who may call the API, and what they may do: OAuth2 client credentials, signed access tokens,
scopes, per-institution visibility, per-client rate limits and the audit log.

Tokens are ES256 JWTs: institutions can verify them with the public JWKS alone, keys are small
and cheap to generate (rotation costs nothing), and signatures are 64 bytes. Client secrets are
random 256-bit strings stored only as scrypt hashes. Every refusal says what went wrong in a
fixed sentence: no secret, token or personal data ever reaches an error body or a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote_plus

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2
from jwt.algorithms import ECAlgorithm
from pydantic import BaseModel, Field
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from adapters.base import Institution
from router.audit import append as append_audit
from router.sealing import signing_key_aad
from router.store import ClientRow, SigningKeyRow
from router.vault import SealError, Vault
from schemas.errors import JokkoError
from services.api.problems import problem_responses

log = logging.getLogger(__name__)

TOKEN_PATH = "/v1/oauth/token"
JWKS_PATH = "/.well-known/jwks.json"

ALGORITHM = "ES256"
"""The only algorithm tokens are signed or accepted with: never ``none``, never HMAC."""

_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CLIENT_CACHE_S = 5.0
"""How long a client's row is trusted by ``verify``: a revocation elsewhere bites within this."""
_KEY_RELOAD_S = 1.0
"""At most one key reload per interval on a miss (unknown ``kid``, JWKS request), so forged
kids and anonymous JWKS requests cannot flood the database."""
_KEY_REFRESH_S = 60.0
"""Keys are reloaded at least this often anyway, to pick up other processes' rotations."""
_IAT_SKEW_S = 60
_MAX_TOKEN_CHARS = 4096
_MAX_FORM_BYTES = 4096


class Scope(StrEnum):
    EVENTS_SUBMIT = "events:submit"
    """The mutual submits canonical events."""
    EVENTS_READ = "events:read"
    """Status trails (the mutual, operators)."""
    DELIVERIES_READ = "deliveries:read"
    """Institutions (their own only), operators (all)."""
    ACKS_WRITE = "acks:write"
    """Institutions post their own acknowledgements."""
    EXTRACTS_WRITE = "extracts:write"
    """Institutions post their own extracts for reconciliation."""
    DEAD_LETTERS = "dead_letters:manage"
    """Operators: list, replay, discard."""
    RECONCILE = "reconcile:run"
    """Operators."""
    CLIENTS_ADMIN = "clients:admin"


_SCOPES = frozenset(s.value for s in Scope)
INSTITUTION_SCOPES = frozenset(
    s.value for s in (Scope.DELIVERIES_READ, Scope.ACKS_WRITE, Scope.EXTRACTS_WRITE)
)
"""All an institution's client may hold: anything else would reach past its own records."""

_SCOPE_HELP = {
    Scope.EVENTS_SUBMIT: "Submit canonical events (the mutual).",
    Scope.EVENTS_READ: "Read events' status trails.",
    Scope.DELIVERIES_READ: "Read deliveries (an institution: its own only).",
    Scope.ACKS_WRITE: "Post acknowledgements (an institution: its own only).",
    Scope.EXTRACTS_WRITE: "Post extracts for reconciliation (an institution: its own only).",
    Scope.DEAD_LETTERS: "List, replay and discard dead letters.",
    Scope.RECONCILE: "Run reconciliations and read their reports.",
    Scope.CLIENTS_ADMIN: "Administer API clients.",
}


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    client_id: str
    scopes: frozenset[str]
    institution: Institution | None
    """Set for an institution's client: the only institution whose records it may see."""

    def may_see(self, institution: str | Institution) -> bool:
        """Whether records of ``institution`` are visible; callers answer 404 when not, so
        another institution's records do not even appear to exist."""
        return self.institution is None or self.institution.value == str(institution)

    def has(self, scope: Scope) -> bool:
        return scope.value in self.scopes


class AuthError(JokkoError):
    """A refused authentication or authorisation; ``message`` is safe to show anyone."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ClientAdminError(JokkoError):
    """A client change that cannot be made (unknown or duplicate client, bad scope)."""


class TokenResponse(BaseModel):
    """RFC 6749 §5.1 access token response."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds the token stays valid.")
    scope: str = Field(description="Space-separated scopes granted.")


class OAuthErrorBody(BaseModel):
    """RFC 6749 §5.2 error response."""

    error: str
    error_description: str | None = None


@dataclass(frozen=True)
class ClientInfo:
    """A client as listed to operators: never its secret or its hash."""

    client_id: str
    scopes: tuple[str, ...]
    institution: Institution | None
    description: str
    created_at: datetime
    revoked_at: datetime | None


# --- client secrets ---------------------------------------------------------------------------

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$digest``: a per-secret salt and parameters kept with the hash, so
    they can be raised later without invalidating existing clients."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def secret_matches(secret: str, stored: str) -> bool:
    """Constant-time comparison against a ``hash_secret`` value."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


@cache
def _decoy_hash() -> str:
    """Checked against when the client is unknown, so timing does not reveal which ids exist."""
    return hash_secret(secrets.token_urlsafe(32))


# --- signing keys -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    kid: str
    algorithm: str
    private: ec.EllipticCurvePrivateKey
    public_jwk: dict[str, Any]
    created_at: float
    retired_at: float | None


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint: a kid anyone can recompute from the public key."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


class SigningKeyUnavailable(AuthError):
    """A signing key in the store that this process cannot open (another keyring, altered
    bytes, or a sealed key and no keyring): tokens can be neither issued nor checked."""

    title = "Service unavailable"
    kind = "unavailable"

    def __init__(self, kid: str, reason: str) -> None:
        log.error("signing key %s cannot be opened with this keyring: %s", kid, reason)
        super().__init__(
            503,
            "temporarily_unavailable",
            f"signing key {kid} cannot be opened with this process's keyring ({reason})",
        )


def _open_pem(row: SigningKeyRow, vault: Vault | None) -> bytes:
    """The row's PEM in clear: sealed under the keyring (or a legacy clear row)."""
    if vault is None:
        if row.private_pem.startswith(b"-----"):
            return row.private_pem
        raise SigningKeyUnavailable(row.kid, "it is sealed and this process has no keyring")
    try:
        return vault.open(row.private_pem, signing_key_aad(row.kid))
    except SealError as exc:
        raise SigningKeyUnavailable(row.kid, str(exc)) from None


def _load_key(row: SigningKeyRow, vault: Vault | None = None) -> _Key:
    try:
        private = serialization.load_pem_private_key(_open_pem(row, vault), password=None)
    except ValueError:
        raise SigningKeyUnavailable(row.kid, "not a private key") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise JokkoError(f"signing key {row.kid} is not an EC key")
    jwk: dict[str, Any] = dict(ECAlgorithm.to_jwk(private.public_key(), as_dict=True))
    jwk.update(kid=row.kid, use="sig", alg=row.algorithm)
    return _Key(
        kid=row.kid,
        algorithm=row.algorithm,
        private=private,
        public_jwk=jwk,
        created_at=row.created_at.timestamp(),
        retired_at=row.retired_at.timestamp() if row.retired_at is not None else None,
    )


def _new_key_row(now: datetime, vault: Vault | None = None) -> SigningKeyRow:
    """A fresh key, its PEM sealed under the keyring's current data key (in clear only for an
    ``Authority`` made without a vault: tests and tools, never the API or the CLI)."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = dict(ECAlgorithm.to_jwk(private.public_key(), as_dict=True))
    kid = _thumbprint(jwk)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    stored = vault.seal(pem, signing_key_aad(kid)) if vault is not None else pem
    return SigningKeyRow(kid=kid, algorithm=ALGORITHM, private_pem=stored, created_at=now)


def stale_signing_key(row_pem: bytes, vault: Vault) -> bool:
    """Whether a stored PEM is in clear or sealed under another than the current data key."""
    return vault.sealed_under(row_pem) != vault.keyring.data.current


# --- the authority ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClientState:
    scopes: frozenset[str]
    institution: Institution | None
    revoked: bool


def _state(row: ClientRow) -> _ClientState:
    return _ClientState(
        scopes=frozenset(row.scopes.split()),
        institution=Institution(row.institution) if row.institution else None,
        revoked=row.revoked_at is not None,
    )


def _invalid_token() -> AuthError:
    return AuthError(401, "invalid_token", "the access token is invalid or expired")


def _invalid_client() -> AuthError:
    return AuthError(401, "invalid_client", "client authentication failed")


class Authority:
    """Issues and verifies access tokens and administers clients, over the shared database.

    Several API processes may share one database: keys and clients live there, each process
    caches them briefly (a revoked client is refused everywhere within ``_CLIENT_CACHE_S``).
    The signing keys' private halves are sealed under ``vault``'s current data key (the
    keyring, a file, never the database); a legacy clear key is sealed when next loaded. The
    API and the CLI always pass the vault; without one (tests, tools) new keys stay in clear
    and a sealed key cannot be opened.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        vault: Vault | None = None,
        issuer: str = "jokko",
        audience: str = "jokko-api",
        token_ttl_s: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.vault = vault
        self.issuer = issuer
        self.audience = audience
        self.token_ttl_s = token_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self._keys_loaded_at = -math.inf
        self._clients: dict[str, tuple[float, _ClientState | None]] = {}

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # clients

    def add_client(
        self,
        client_id: str,
        scopes: Iterable[str],
        *,
        institution: Institution | None = None,
        description: str = "",
        actor: str = "cli",
    ) -> str:
        """Register a client; returns its secret, which is stored only hashed (show it once)."""
        if not _CLIENT_ID.match(client_id):
            raise ClientAdminError("a client id is 1-64 letters, digits, '.', '_' or '-'")
        granted = sorted(set(scopes))
        unknown = [s for s in granted if s not in _SCOPES]
        if unknown or not granted:
            raise ClientAdminError(
                f"scopes must be among {', '.join(Scope)}; got {' '.join(granted) or 'none'}"
            )
        if institution is not None and not set(granted) <= INSTITUTION_SCOPES:
            raise ClientAdminError(
                "an institution's client may only hold " + ", ".join(sorted(INSTITUTION_SCOPES))
            )
        secret = secrets.token_urlsafe(32)
        now = self._now()
        row = ClientRow(
            client_id=client_id,
            secret_hash=hash_secret(secret),
            scopes=" ".join(granted),
            institution=institution.value if institution else None,
            description=description[:255],
            created_at=now,
        )
        detail = f"scopes={row.scopes}" + (f" institution={row.institution}" if institution else "")
        try:
            with Session(self.engine) as session, session.begin():
                if session.get(ClientRow, client_id) is not None:
                    raise ClientAdminError(f"client {client_id} already exists")
                session.add(row)
                self._audit_in(session, actor, "client.add", client_id, detail)
        except IntegrityError:
            raise ClientAdminError(f"client {client_id} already exists") from None
        with self._lock:
            self._clients.pop(client_id, None)
        return secret

    def revoke_client(self, client_id: str, *, actor: str = "cli") -> None:
        """Refuse the client's secret and every token already issued to it (idempotent)."""
        with Session(self.engine) as session, session.begin():
            row = session.get(ClientRow, client_id)
            if row is None:
                raise ClientAdminError(f"no client {client_id}")
            if row.revoked_at is None:
                row.revoked_at = self._now()
                self._audit_in(session, actor, "client.revoke", client_id, None)
        with self._lock:
            self._clients.pop(client_id, None)

    def clients(self) -> list[ClientInfo]:
        with Session(self.engine) as session:
            rows = session.scalars(select(ClientRow).order_by(ClientRow.client_id)).all()
            return [
                ClientInfo(
                    client_id=r.client_id,
                    scopes=tuple(r.scopes.split()),
                    institution=Institution(r.institution) if r.institution else None,
                    description=r.description,
                    created_at=r.created_at,
                    revoked_at=r.revoked_at,
                )
                for r in rows
            ]

    def _client_state(self, client_id: str) -> _ClientState | None:
        now = self._clock()
        with self._lock:
            cached = self._clients.get(client_id)
        if cached is not None and now - cached[0] < _CLIENT_CACHE_S:
            return cached[1]
        with Session(self.engine) as session:
            row = session.get(ClientRow, client_id)
            state = _state(row) if row is not None else None
        with self._lock:
            self._clients[client_id] = (now, state)
        return state

    # tokens

    def issue_token(
        self, client_id: str, client_secret: str, scope: str | None = None
    ) -> TokenResponse:
        """Client credentials grant: a token for the requested scopes (all the client's when
        none are asked for)."""
        with Session(self.engine) as session:
            row = session.get(ClientRow, client_id) if _CLIENT_ID.match(client_id) else None
            ok = secret_matches(client_secret, row.secret_hash if row else _decoy_hash())
            if row is None or not ok or row.revoked_at is not None:
                log.info("token refused: client authentication failed for %.64r", client_id)
                raise _invalid_client()
            state = _state(row)
        requested = frozenset(scope.split()) if scope and scope.strip() else state.scopes
        if not requested <= state.scopes:
            log.info("token refused: scope not granted to client %s", client_id)
            raise AuthError(400, "invalid_scope", "the requested scope is not granted")
        with self._lock:
            self._clients[client_id] = (self._clock(), state)
        key = self._signing_key()
        now = int(self._clock())
        granted = " ".join(sorted(requested))
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": client_id,
            "client_id": client_id,
            "iat": now,
            "exp": now + self.token_ttl_s,
            "jti": uuid.uuid4().hex,
            "scope": granted,
        }
        if state.institution is not None:
            claims["institution"] = state.institution.value
        token = jwt.encode(
            claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "at+jwt"}
        )
        return TokenResponse(access_token=token, expires_in=self.token_ttl_s, scope=granted)

    def verify(self, token: str) -> Principal:
        """The caller behind a bearer token, or ``AuthError(401)`` for any flaw at all."""
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise _invalid_token()
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid_token() from None
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or alg != ALGORITHM:
            raise _invalid_token()
        key = self._verification_key(kid)
        if key is None or key.algorithm != alg:
            raise _invalid_token()
        try:
            claims = jwt.decode(
                token,
                key.private.public_key(),
                algorithms=[key.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                # Times are checked below against the injectable clock.
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub", "scope"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            raise _invalid_token() from None
        now = self._clock()
        exp, iat, sub, scope = claims["exp"], claims["iat"], claims["sub"], claims["scope"]
        if not all(isinstance(t, int | float) for t in (exp, iat)):
            raise _invalid_token()
        if not isinstance(sub, str) or not isinstance(scope, str):
            raise _invalid_token()
        if now >= exp or iat > now + _IAT_SKEW_S:
            raise _invalid_token()
        client = self._client_state(sub)
        if client is None or client.revoked:
            raise _invalid_token()
        return Principal(sub, frozenset(scope.split()) & client.scopes, client.institution)

    # keys

    def _refresh_keys(self) -> None:
        """Reload the live keys; a retirement may have been decided by another process."""
        horizon = datetime.fromtimestamp(self._clock() - self.token_ttl_s, UTC)
        fresh: dict[str, _Key] = {}
        stale = False
        with Session(self.engine) as session:
            rows = session.scalars(
                select(SigningKeyRow).where(
                    SigningKeyRow.retired_at.is_(None) | (SigningKeyRow.retired_at > horizon)
                )
            ).all()
            for r in rows:
                known = self._keys.get(r.kid)
                retired = r.retired_at.timestamp() if r.retired_at is not None else None
                if known and known.retired_at == retired:
                    fresh[r.kid] = known
                    continue
                fresh[r.kid] = _load_key(r, self.vault)
                if self.vault is not None and stale_signing_key(r.private_pem, self.vault):
                    r.private_pem = self.vault.seal(
                        _open_pem(r, self.vault), signing_key_aad(r.kid)
                    )
                    stale = True
            if stale:
                session.commit()  # sealed lazily: in clear from before, or under an older key
        with self._lock:
            self._keys = fresh
            self._keys_loaded_at = self._clock()

    def _live(self, key: _Key, now: float) -> bool:
        return key.retired_at is None or now < key.retired_at + self.token_ttl_s

    def _verification_key(self, kid: str) -> _Key | None:
        key = self._keys.get(kid)
        age = self._clock() - self._keys_loaded_at
        if age >= _KEY_REFRESH_S or (key is None and age >= _KEY_RELOAD_S):
            self._refresh_keys()
            key = self._keys.get(kid)
        return key if key is not None and self._live(key, self._clock()) else None

    def _signing_key(self) -> _Key:
        """The newest unretired key, read afresh: another process may have rotated."""
        with Session(self.engine) as session:
            row = session.scalars(
                select(SigningKeyRow)
                .where(SigningKeyRow.retired_at.is_(None))
                .order_by(SigningKeyRow.created_at.desc(), SigningKeyRow.kid)
                .limit(1)
            ).first()
            kid = row.kid if row is not None else None
        if kid is None:
            kid = self._create_key(actor="system", retire=False)
        key = self._keys.get(kid)
        if key is None:
            self._refresh_keys()
            key = self._keys[kid]
        return key

    def _create_key(self, *, actor: str, retire: bool) -> str:
        now = self._now()
        row = _new_key_row(now, self.vault)
        kid = row.kid
        with Session(self.engine) as session, session.begin():
            if retire:
                session.execute(
                    update(SigningKeyRow)
                    .where(SigningKeyRow.retired_at.is_(None))
                    .values(retired_at=now)
                )
            session.add(row)
            action = "key.rotate" if retire else "key.create"
            self._audit_in(session, actor, action, kid, None)
        self._refresh_keys()
        return kid

    def rotate(self, *, actor: str = "cli") -> str:
        """A new signing key; the old one stays in the JWKS until its last token expires."""
        return self._create_key(actor=actor, retire=True)

    def jwks(self) -> dict[str, Any]:
        """Public keys of the active and not yet expired retired keys, newest first."""
        now = self._clock()
        if now - self._keys_loaded_at >= _KEY_RELOAD_S:
            self._refresh_keys()
        live = sorted(
            (k for k in self._keys.values() if self._live(k, now)),
            key=lambda k: (-k.created_at, k.kid),
        )
        return {"keys": [dict(k.public_jwk) for k in live]}

    # audit

    def _audit_in(
        self, session: Session, actor: str, action: str, target: str | None, detail: str | None
    ) -> None:
        """Chained in ``session``'s transaction: the row stands or falls with the change."""
        append_audit(
            session, actor=actor, action=action, target=target, detail=detail, at=self._now()
        )

    def audit(
        self, actor: str, action: str, target: str | None = None, detail: str | None = None
    ) -> None:
        """Record who did what (replays, discards, client and key changes); never secrets."""
        with Session(self.engine) as session, session.begin():
            self._audit_in(session, actor, action, target, detail)


# --- rate limits ------------------------------------------------------------------------------


class RateLimiter:
    """Token bucket per client: ``rate`` requests a second on average, bursts of ``burst``.

    Per process: behind N API workers a client gets N times the rate, which is still a bound.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max = max_clients
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, client: str) -> float:
        """Take one token: 0 if allowed, else the seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                if len(self._buckets) > self._max:
                    self._prune(now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget full buckets (they hold no state), then the oldest if still too many."""
        full = [
            c for c, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst
        ]
        for c in full:
            del self._buckets[c]
        while len(self._buckets) > self._max:
            del self._buckets[next(iter(self._buckets))]


# --- FastAPI glue -----------------------------------------------------------------------------

_REALM = 'Bearer realm="jokko"'

oauth2_scheme = OAuth2(
    flows=OAuthFlows(
        clientCredentials=OAuthFlowClientCredentials(
            tokenUrl=TOKEN_PATH, scopes={s.value: h for s, h in _SCOPE_HELP.items()}
        )
    ),
    scheme_name="OAuth2ClientCredentials",
    description="OAuth2 client credentials; access tokens are ES256 JWTs (see the JWKS).",
    auto_error=False,
)


async def get_authority(request: Request) -> Authority:
    """``async``: it only reads ``app.state``, no threadpool hop needed."""
    authority: Authority = request.app.state.authority
    return authority


AuthorityDep = Annotated[Authority, Depends(get_authority)]


def _rate_limit(request: Request, key: str) -> None:
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return
    wait = limiter.acquire(key)
    if wait > 0:
        raise HTTPException(
            429,
            "too many requests from this client; retry later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


def principal(
    request: Request,
    authority: AuthorityDep,
    authorization: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    """The caller, from ``Authorization: Bearer``; 401 if absent or invalid, 429 over its rate.

    Kept on ``request.state`` so a route with several ``require`` costs one token only.
    """
    known: Principal | None = getattr(request.state, "jokko_principal", None)
    if known is not None:
        return known
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "an access token is required", headers={"WWW-Authenticate": _REALM}
        )
    try:
        who = authority.verify(token.strip())
    except SigningKeyUnavailable:
        raise  # a 503 problem (the keyring, not the caller, is wrong)
    except AuthError as exc:
        raise HTTPException(
            401, exc.message, headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'}
        ) from None
    _rate_limit(request, who.client_id)
    request.state.jokko_principal = who
    return who


PrincipalDep = Annotated[Principal, Depends(principal)]


def require(*scopes: Scope) -> Any:
    """``Annotated[Principal, require(Scope.X)]``: the caller, 403 unless it holds every scope.

    Declared with ``Security`` so OpenAPI lists each operation's scopes.
    """
    needed = frozenset(s.value for s in scopes)

    async def _has_scopes(who: PrincipalDep) -> Principal:  # no I/O: no threadpool hop
        if not needed <= who.scopes:
            challenge = f'{_REALM}, error="insufficient_scope", scope="{" ".join(sorted(needed))}"'
            raise HTTPException(
                403,
                "this client lacks the scope for this operation",
                headers={"WWW-Authenticate": challenge},
            )
        return who

    return Security(_has_scopes, scopes=sorted(needed))


_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(
    status: int, error: str, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = OAuthErrorBody(error=error, error_description=description)
    return JSONResponse(
        body.model_dump(exclude_none=True), status, headers={**_NO_STORE, **(headers or {})}
    )


class _BadRequest(Exception):
    def __init__(self, error: str, description: str) -> None:
        self.error = error
        self.description = description


def _basic_credentials(authorization: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined by ':' and base64-ed."""
    try:
        decoded = base64.b64decode(authorization, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _BadRequest("invalid_request", "malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _BadRequest("invalid_request", "malformed Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)


def _token_request(content_type: str, body: bytes, authorization: str | None) -> dict[str, str]:
    if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise _BadRequest("invalid_request", "use application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest("invalid_request", "malformed form body") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise _BadRequest("invalid_request", "a parameter is repeated")
    if form.get("grant_type") is None:
        raise _BadRequest("invalid_request", "grant_type is required")
    if form["grant_type"] != "client_credentials":
        raise _BadRequest("unsupported_grant_type", "only client_credentials is supported")
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "basic":
        if "client_secret" in form:
            raise _BadRequest("invalid_request", "use one client authentication method only")
        client_id, secret = _basic_credentials(credentials.strip())
        if form.get("client_id", client_id) != client_id:
            raise _BadRequest("invalid_request", "client_id does not match the credentials")
        form["client_id"], form["client_secret"] = client_id, secret
    if not form.get("client_id") or "client_secret" not in form:
        raise _BadRequest("invalid_request", "client_id and client_secret are required")
    return form


_FORM_SCHEMA = {
    "type": "object",
    "required": ["grant_type"],
    "properties": {
        "grant_type": {"type": "string", "enum": ["client_credentials"]},
        "client_id": {"type": "string", "description": "Or in HTTP Basic authentication."},
        "client_secret": {"type": "string", "description": "Or in HTTP Basic authentication."},
        "scope": {"type": "string", "description": "Space-separated; default: all granted."},
    },
}


def security_router() -> APIRouter:
    """The token endpoint and the JWKS, using the ``Authority`` on ``app.state.authority``."""
    router = APIRouter(tags=["auth"])

    @router.post(
        TOKEN_PATH,
        response_model=TokenResponse,
        summary="Access token (OAuth2 client credentials)",
        responses={
            400: {"model": OAuthErrorBody, "description": "RFC 6749 error"},
            401: {"model": OAuthErrorBody, "description": "Client authentication failed"},
            429: {"description": "Too many requests; see Retry-After"},
            **problem_responses(503),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA}},
            }
        },
    )
    async def token(request: Request) -> JSONResponse:
        authority: Authority = request.app.state.authority
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return _oauth_error(400, "invalid_request", "the request is too large")
        authorization = request.headers.get("Authorization")
        try:
            form = _token_request(request.headers.get("content-type", ""), body, authorization)
        except _BadRequest as exc:
            return _oauth_error(400, exc.error, exc.description)
        client_id = form["client_id"]
        if _CLIENT_ID.match(client_id):
            _rate_limit(request, f"token:{client_id}")
        try:
            answer = await run_in_threadpool(
                authority.issue_token, client_id, form["client_secret"], form.get("scope")
            )
        except AuthError as exc:
            # RFC 6749 §5.2: a 401 carries the challenge of the Basic scheme it accepts.
            challenge = {"WWW-Authenticate": 'Basic realm="jokko"'} if exc.status == 401 else {}
            return _oauth_error(exc.status, exc.code, exc.message, challenge)
        return JSONResponse(answer.model_dump(), headers=_NO_STORE)

    @router.get(JWKS_PATH, summary="Public keys verifying access tokens (JWKS)")
    def jwks(authority: AuthorityDep) -> JSONResponse:
        return JSONResponse(authority.jwks(), headers={"Cache-Control": "public, max-age=60"})

    return router
