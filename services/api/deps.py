"""Request-scoped dependencies (Annotated, as in the FastAPI full-stack template).

The ones that only read ``app.state`` are ``async``: FastAPI runs a plain ``def`` dependency
in its threadpool, a thread hop per request for nothing. ``get_session`` stays a ``def``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
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
