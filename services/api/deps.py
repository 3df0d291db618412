"""Request-scoped dependencies (Annotated, as in the FastAPI full-stack template).

The ones that only read ``app.state`` are ``async``: FastAPI runs a plain ``def`` dependency
in its threadpool, a thread hop per request for nothing. ``get_session`` stays a ``def``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from kafka import KafkaProducer
from sqlalchemy.orm import Session

from services.bootstrap import Jokko


async def get_jokko(request: Request) -> Jokko:
    jokko: Jokko = request.app.state.jokko
    return jokko


def get_session(request: Request) -> Iterator[Session]:
    jokko: Jokko = request.app.state.jokko
    with Session(jokko.engine) as session:
        yield session


async def get_producer(request: Request) -> KafkaProducer:
    producer: KafkaProducer = request.app.state.producer
    return producer


JokkoDep = Annotated[Jokko, Depends(get_jokko)]
SessionDep = Annotated[Session, Depends(get_session)]
ProducerDep = Annotated[KafkaProducer, Depends(get_producer)]


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def require_json(request: Request) -> None:
    """415 for a body declared as anything but JSON (or not declared): never guessed at."""
    if not _is_json(request.headers.get("content-type", "")):
        raise HTTPException(415, "the body must be JSON, sent with Content-Type: application/json")
