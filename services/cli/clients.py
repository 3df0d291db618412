"""``jokko clients``: the API's OAuth2 clients (client credentials), added, revoked, listed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adapters.base import Institution
from services.cli.wiring import actor, authority

clients_app = typer.Typer(no_args_is_help=True, help="API clients (OAuth2 client credentials).")


@clients_app.command("add")
def clients_add(
    client_id: Annotated[str, typer.Argument(help="Client id, e.g. css-prod.")],
    scope: Annotated[
        list[str], typer.Option("--scope", help="A scope to grant (repeat), e.g. acks:write.")
    ],
    institution: Annotated[
        Institution | None,
        typer.Option(help="The institution this client acts for: it sees only its records."),
    ] = None,
    description: Annotated[str, typer.Option(help="Who holds it, what for.")] = "",
) -> None:
    """Register a client and print its secret, once: only a hash is stored."""
    from services.api.auth import ClientAdminError

    try:
        secret = authority().add_client(
            client_id, scope, institution=institution, description=description, actor=actor()
        )
    except ClientAdminError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    typer.echo(f"client_id: {client_id}")
    typer.echo(f"client_secret: {secret}")
    Console(stderr=True).print("The secret is shown this once: hand it over securely now.")


@clients_app.command("revoke")
def clients_revoke(client_id: Annotated[str, typer.Argument(help="Client id.")]) -> None:
    """Refuse the client's secret and every token it holds (within seconds on every API)."""
    from services.api.auth import ClientAdminError

    try:
        authority().revoke_client(client_id, actor=actor())
    except ClientAdminError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    Console().print(f"revoked {client_id}")


@clients_app.command("list")
def clients_list() -> None:
    """Clients, their scopes and status (never their secrets)."""
    table = Table("client", "institution", "scopes", "created", "status", "description")
    for c in authority().clients():
        status = f"revoked {c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else "active"
        table.add_row(
            c.client_id,
            c.institution.value if c.institution else "-",
            " ".join(c.scopes),
            f"{c.created_at:%Y-%m-%d %H:%M}",
            status,
            c.description,
        )
    Console(width=200).print(table)
