"""The ``jokko`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from schemas.errors import JokkoError
from services.bootstrap import Jokko, bootstrap, stop_on_signals
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


def _configure_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)


def _jokko() -> Jokko:
    try:
        return bootstrap(load_settings())
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


@app.command()
def router() -> None:
    """Consume the canonical topic: inbox + outbox per event, offsets committed after."""
    _configure_logging()
    stop = stop_on_signals()
    _jokko().router().run(stop)


@app.command()
def relay() -> None:
    """Publish outbox rows to the per-institution topics, then mark them sent."""
    _configure_logging()
    stop = stop_on_signals()
    _jokko().relay().run(stop)


@app.command()
def replay(
    dead_letter_ids: Annotated[list[int], typer.Argument(help="Dead-letter ids to re-drive.")],
) -> None:
    """Re-drive dead letters through the idempotent router."""
    from router.replay import replay as replay_dead_letters

    jokko = _jokko()
    results = replay_dead_letters(jokko.engine, jokko.processor(), dead_letter_ids)
    for dl_id, result in results.items():
        Console().print(f"dead letter {dl_id}: {result}")


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
