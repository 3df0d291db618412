"""Who may call the API, and what they may do: OAuth2 client credentials, signed access tokens,
scopes, per-institution visibility, per-client rate limits and the audit log.

One module per responsibility: ``scopes`` (what a client may do, the caller of a request),
``keys`` (the keys signing access tokens), ``authority`` (issuing and verifying tokens,
administering clients, the audit log), ``ratelimit`` (per-client token buckets), ``routes``
(the token endpoint, the JWKS and the FastAPI dependencies) and ``errors`` (the refusals).
"""

from services.api.auth.authority import (
    Authority,
    ClientInfo,
    TokenResponse,
    hash_secret,
    secret_matches,
)
from services.api.auth.errors import AuthError, ClientAdminError, SigningKeyUnavailable
from services.api.auth.keys import ALGORITHM
from services.api.auth.ratelimit import RateLimiter
from services.api.auth.routes import (
    JWKS_PATH,
    TOKEN_PATH,
    AuthorityDep,
    OAuthErrorBody,
    PrincipalDep,
    get_authority,
    oauth2_scheme,
    principal,
    rate_limit,
    require,
    security_router,
)
from services.api.auth.scopes import INSTITUTION_SCOPES, Principal, Scope

__all__ = [
    "ALGORITHM",
    "INSTITUTION_SCOPES",
    "JWKS_PATH",
    "TOKEN_PATH",
    "AuthError",
    "Authority",
    "AuthorityDep",
    "ClientAdminError",
    "ClientInfo",
    "OAuthErrorBody",
    "Principal",
    "PrincipalDep",
    "RateLimiter",
    "Scope",
    "SigningKeyUnavailable",
    "TokenResponse",
    "get_authority",
    "hash_secret",
    "oauth2_scheme",
    "principal",
    "rate_limit",
    "require",
    "secret_matches",
    "security_router",
]
