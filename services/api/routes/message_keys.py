"""Jokko's message-signing public keys: the one document an institution needs to verify what
Jokko sends (pushes, batches, IPRES files), unauthenticated like any JWKS."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import JokkoDep

router = APIRouter(tags=["keys"])

MESSAGE_KEYS_PATH = "/.well-known/jokko-message-keys.json"


@router.get(
    MESSAGE_KEYS_PATH,
    operation_id="message_keys_jwks",
    summary="Public keys verifying Jokko's signed messages and files (JWKS)",
    description=(
        "OKP/Ed25519 keys (RFC 8037) by `kid`, the current one first, then the previous ones "
        "still valid for what they signed. A push names its key in `webhook-key-id` and signs "
        "`{webhook-id}.{webhook-timestamp}.{body}` (Standard Webhooks `v1a`); a declaration "
        "file's `.sig` names it in `kid`."
    ),
    response_model=dict[str, list[dict[str, str]]],
)
def message_keys(jokko: JokkoDep) -> Any:
    # Short cache: a rotation (relay and API restarted) reaches verifiers within minutes, and
    # a verifier meeting an unknown kid fetches again anyway.
    return JSONResponse(jokko.message_keys.jwks(), headers={"Cache-Control": "public, max-age=300"})
