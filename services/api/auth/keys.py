"""The keys signing the API's access tokens: ES256 (P-256) keys named by their RFC 7638
thumbprint, kept in the database with their private half sealed under the keyring's current
data key (``router.vault``), never in clear but for a legacy row or a store without keyring."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from router.sealing import signing_key_aad
from router.store import SigningKeyRow
from router.vault import SealError, Vault
from schemas.errors import JokkoError
from services.api.auth.errors import SigningKeyUnavailable

ALGORITHM = "ES256"
"""The only algorithm tokens are signed or accepted with: never ``none``, never HMAC."""


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JOSE writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private: ec.EllipticCurvePrivateKey
    public_jwk: dict[str, Any]
    created_at: float
    retired_at: float | None


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint: a kid anyone can recompute from the public key."""
    members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def open_pem(row: SigningKeyRow, vault: Vault | None) -> bytes:
    """The row's PEM in clear: sealed under the keyring (or a legacy clear row)."""
    if vault is None:
        if row.private_pem.startswith(b"-----"):
            return row.private_pem
        raise SigningKeyUnavailable(row.kid, "it is sealed and this process has no keyring")
    try:
        return vault.open(row.private_pem, signing_key_aad(row.kid))
    except SealError as exc:
        raise SigningKeyUnavailable(row.kid, str(exc)) from None


def load_key(row: SigningKeyRow, vault: Vault | None = None) -> SigningKey:
    try:
        private = serialization.load_pem_private_key(open_pem(row, vault), password=None)
    except ValueError:
        raise SigningKeyUnavailable(row.kid, "not a private key") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise JokkoError(f"signing key {row.kid} is not an EC key")
    jwk: dict[str, Any] = dict(ECAlgorithm.to_jwk(private.public_key(), as_dict=True))
    jwk.update(kid=row.kid, use="sig", alg=row.algorithm)
    return SigningKey(
        kid=row.kid,
        algorithm=row.algorithm,
        private=private,
        public_jwk=jwk,
        created_at=row.created_at.timestamp(),
        retired_at=row.retired_at.timestamp() if row.retired_at is not None else None,
    )


def new_key_row(now: datetime, vault: Vault | None = None) -> SigningKeyRow:
    """A fresh key, its PEM sealed under the keyring's current data key (in clear only for an
    ``Authority`` made without a vault: tests and tools, never the API or the CLI)."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = dict(ECAlgorithm.to_jwk(private.public_key(), as_dict=True))
    kid = thumbprint(jwk)
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
