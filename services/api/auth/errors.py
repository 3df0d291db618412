"""The refusals of API security, in Jokko's one error hierarchy: each says what went wrong in
a fixed sentence, safe to show anyone (never a secret, a token or personal data)."""

from __future__ import annotations

import logging

from schemas.errors import JokkoError

log = logging.getLogger(__name__)


class AuthError(JokkoError):
    """A refused authentication or authorisation; ``message`` is safe to show anyone."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ClientAdminError(JokkoError):
    """A client change that cannot be made (unknown or duplicate client, bad scope)."""


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


class BadTokenRequest(JokkoError):
    """A token request refused before any client is looked up (RFC 6749 §5.2 ``error``)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def invalid_token() -> AuthError:
    return AuthError(401, "invalid_token", "the access token is invalid or expired")


def invalid_client() -> AuthError:
    return AuthError(401, "invalid_client", "client authentication failed")
