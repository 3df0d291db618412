"""The ``jokko`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from schemas.errors import JokkoError
from services.settings import load_settings

app = typer.Typer(no_args_is_help=True, help="Jokko: the RSPC interoperability middleware.")
schema_app = typer.Typer(no_args_is_help=True, help="Canonical event schemas.")
app.add_typer(schema_app, name="schema")

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "json"


@schema_app.command("export")
def schema_export(
    out: Annotated[Path, typer.Option(help="Folder to write the JSON Schemas to.")] = (
        DEFAULT_SCHEMA_DIR
    ),
) -> None:
    """Write the JSON Schema of every canonical event type (committed, drift-checked)."""
    from schemas.export import export_json_schemas

    written = export_json_schemas(out)
    Console().print(f"wrote {len(written)} JSON Schemas to {out}")


@app.command()
def demo(
    kafka_bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap servers (default: JOKKO_KAFKA_BOOTSTRAP).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 60,
) -> None:
    """Publish the example events to the canonical topic, read them back, print a summary."""
    from services import demo as demo_flow

    console = Console()
    try:
        overrides = {"kafka_bootstrap": kafka_bootstrap} if kafka_bootstrap else {}
        ok = demo_flow.run(load_settings(**overrides), console, timeout)
    except JokkoError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(0 if ok else 1)
