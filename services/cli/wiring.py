"""What the ``jokko`` commands that work on the database alone build: the store, the token
authority, and the actor named in the audit log."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console

from schemas.errors import JokkoError
from services.bootstrap import Jokko, bootstrap
from services.settings import load_settings

if TYPE_CHECKING:
    from services.api.auth import Authority


def authority() -> Authority:
    """The database only: client and key changes must work while Kafka is down."""
    from services.api.auth import Authority

    try:
        jokko = bootstrap(load_settings(), kafka=False)
        return Authority(jokko.engine, vault=jokko.vault)
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def actor() -> str:
    """The operating-system user, so the audit log says who ran the command."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


def jokko_db() -> Jokko:
    """The database only: key and erasure work must not wait for Kafka."""
    try:
        return bootstrap(load_settings(), kafka=False)
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
