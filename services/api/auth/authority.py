"""Who may call the API: the token authority issuing and verifying access tokens for OAuth2
clients (client credentials), administering those clients and writing the audit log.

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
from functools import cache
from typing import Any, Literal

import jwt
from pydantic import BaseModel, Field
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.audit import append as append_audit
from router.sealing import signing_key_aad
from router.store import ClientRow, SigningKeyRow
from router.vault import Vault
from services.api.auth.errors import AuthError, ClientAdminError, invalid_client, invalid_token
from services.api.auth.keys import (
    ALGORITHM,
    SigningKey,
    b64url,
    load_key,
    new_key_row,
    open_pem,
    stale_signing_key,
)
from services.api.auth.scopes import INSTITUTION_SCOPES, SCOPES, Principal, Scope

log = logging.getLogger(__name__)

CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CLIENT_CACHE_S = 5.0
"""How long a client's row is trusted by ``verify``: a revocation elsewhere bites within this."""
_KEY_RELOAD_S = 1.0
"""At most one key reload per interval on a miss (unknown ``kid``, JWKS request), so forged
kids and anonymous JWKS requests cannot flood the database."""
_KEY_REFRESH_S = 60.0
"""Keys are reloaded at least this often anyway, to pick up other processes' rotations."""
_IAT_SKEW_S = 60
_MAX_TOKEN_CHARS = 4096


class TokenResponse(BaseModel):
    """RFC 6749 §5.1 access token response."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds the token stays valid.")
    scope: str = Field(description="Space-separated scopes granted.")


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


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """``scrypt$n$r$p$salt$digest``: a per-secret salt and parameters kept with the hash, so
    they can be raised later without invalidating existing clients."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        secret.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64url(salt)}${b64url(digest)}"


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
        self._keys: dict[str, SigningKey] = {}
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
        if not CLIENT_ID.match(client_id):
            raise ClientAdminError("a client id is 1-64 letters, digits, '.', '_' or '-'")
        granted = sorted(set(scopes))
        unknown = [s for s in granted if s not in SCOPES]
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
            row = session.get(ClientRow, client_id) if CLIENT_ID.match(client_id) else None
            ok = secret_matches(client_secret, row.secret_hash if row else _decoy_hash())
            if row is None or not ok or row.revoked_at is not None:
                log.info("token refused: client authentication failed for %.64r", client_id)
                raise invalid_client()
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
            raise invalid_token()
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise invalid_token() from None
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or alg != ALGORITHM:
            raise invalid_token()
        key = self._verification_key(kid)
        if key is None or key.algorithm != alg:
            raise invalid_token()
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
            raise invalid_token() from None
        now = self._clock()
        exp, iat, sub, scope = claims["exp"], claims["iat"], claims["sub"], claims["scope"]
        if not all(isinstance(t, int | float) for t in (exp, iat)):
            raise invalid_token()
        if not isinstance(sub, str) or not isinstance(scope, str):
            raise invalid_token()
        if now >= exp or iat > now + _IAT_SKEW_S:
            raise invalid_token()
        client = self._client_state(sub)
        if client is None or client.revoked:
            raise invalid_token()
        return Principal(sub, frozenset(scope.split()) & client.scopes, client.institution)

    # keys

    def _refresh_keys(self) -> None:
        """Reload the live keys; a retirement may have been decided by another process."""
        horizon = datetime.fromtimestamp(self._clock() - self.token_ttl_s, UTC)
        fresh: dict[str, SigningKey] = {}
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
                fresh[r.kid] = load_key(r, self.vault)
                if self.vault is not None and stale_signing_key(r.private_pem, self.vault):
                    r.private_pem = self.vault.seal(open_pem(r, self.vault), signing_key_aad(r.kid))
                    stale = True
            if stale:
                session.commit()  # sealed lazily: in clear from before, or under an older key
        with self._lock:
            self._keys = fresh
            self._keys_loaded_at = self._clock()

    def _live(self, key: SigningKey, now: float) -> bool:
        return key.retired_at is None or now < key.retired_at + self.token_ttl_s

    def _verification_key(self, kid: str) -> SigningKey | None:
        key = self._keys.get(kid)
        age = self._clock() - self._keys_loaded_at
        if age >= _KEY_REFRESH_S or (key is None and age >= _KEY_RELOAD_S):
            self._refresh_keys()
            key = self._keys.get(kid)
        return key if key is not None and self._live(key, self._clock()) else None

    def _signing_key(self) -> SigningKey:
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
        row = new_key_row(now, self.vault)
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
