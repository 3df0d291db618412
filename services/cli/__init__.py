"""The ``jokko`` command line."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from schemas.errors import JokkoError
from services.bootstrap import Jokko, bootstrap, stop_on_signals
from services.cli.clients import clients_app
from services.cli.evidence import evidence
from services.cli.keys import keys_app
from services.cli.wiring import actor, jokko_db
from services.settings import InvalidSettings, Settings, load_settings

app = typer.Typer(no_args_is_help=True, help="Jokko: the RSPC interoperability middleware.")
schema_app = typer.Typer(no_args_is_help=True, help="Canonical event schemas.")
app.add_typer(schema_app, name="schema")

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent.parent.parent / "schemas" / "json"


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
    jokko = _jokko()
    try:
        relay = jokko.relay()
    except JokkoError as exc:  # its channels: TLS files that do not load
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    relay.run(stop)


@app.command()
def api() -> None:
    """Serve the REST API (JOKKO_API_HOST, JOKKO_API_PORT) until SIGTERM or Ctrl-C."""
    import uvicorn

    from services.api.app import create_app
    from services.api.auth import RateLimiter

    _configure_logging()
    jokko = _jokko()
    limiter = RateLimiter(jokko.settings.api_rate_per_s, jokko.settings.api_rate_burst)
    try:
        tls = api_tls(jokko.settings)
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    uvicorn.run(
        create_app(jokko, rate_limiter=limiter),
        host=jokko.settings.api_host,
        port=jokko.settings.api_port,
        log_config=None,
        access_log=False,
        **tls,
    )


def api_tls(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options from settings: none (plain HTTP, for a reverse proxy that
    terminates TLS), the API's certificate, and with a client CA, client certificates
    required. uvicorn's server context keeps Python's floor of TLS 1.2. The files are loaded
    here first, so a bad one stops the API with the setting's name, not a traceback."""
    if settings.api_tls_cert_file is None:
        return {}
    try:
        check = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        check.load_cert_chain(settings.api_tls_cert_file, settings.api_tls_key_file)
        if settings.api_tls_client_ca_file is not None:
            check.load_verify_locations(settings.api_tls_client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidSettings(
            "JOKKO_API_TLS_CERT_FILE, JOKKO_API_TLS_KEY_FILE, JOKKO_API_TLS_CLIENT_CA_FILE: "
            f"the TLS files do not load: {exc}"
        ) from None
    options: dict[str, Any] = {
        "ssl_certfile": str(settings.api_tls_cert_file),
        "ssl_keyfile": str(settings.api_tls_key_file),
    }
    if settings.api_tls_client_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.api_tls_client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


@app.command()
def replay(
    dead_letter_ids: Annotated[list[int], typer.Argument(help="Dead-letter ids to re-drive.")],
) -> None:
    """Re-drive dead letters through the idempotent router."""
    from router.replay import replay as replay_dead_letters
    from router.replay import unknown_dead_letters

    jokko = _jokko()
    unknown = unknown_dead_letters(jokko.engine, dead_letter_ids)
    if unknown:
        listed = ", ".join(str(i) for i in unknown)
        Console(stderr=True).print(f"[red]error:[/] no dead letter {listed}; nothing replayed")
        raise typer.Exit(1)
    results = replay_dead_letters(jokko.engine, jokko.processor(), dead_letter_ids)
    for dl_id, result in results.items():
        Console().print(f"dead letter {dl_id}: {result}")


@app.command()
def demo(
    members: Annotated[int, typer.Option(min=14, max=100_000, help="MSNAS members.")] = 2000,
    workdir: Annotated[
        Path, typer.Option(help="Folder for the store, logs and reports (wiped first).")
    ] = Path(".jokko/demo"),
    exit_at_end: Annotated[
        bool, typer.Option("--exit", help="Stop at the end instead of serving the console.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed for each wait.")] = 600,
) -> None:
    """A month of MSNAS activity through the API, router and relay to fake CMU, CSS and IPRES,
    with faults, a tally, and a reconciliation closed by re-drive (needs a Kafka broker:
    JOKKO_KAFKA_BOOTSTRAP; `make demo` starts one)."""
    from services import demo as demo_flow

    console = Console()
    options = demo_flow.Options(
        members=members, workdir=workdir, exit_at_end=exit_at_end, timeout_s=timeout
    )
    try:
        outcome = demo_flow.run(load_settings(), console, options)
    except JokkoError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(0 if outcome.ok else 1)


app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
app.command("evidence")(evidence)


@app.command()
def erase(
    member_id: Annotated[str, typer.Argument(help="The member whose personal data goes.")],
    reason: Annotated[str, typer.Option(help="The request it answers (kept in the audit log).")],
) -> None:
    """Erase a member's personal data once the retention period is over: their data key is
    destroyed (every message Jokko keeps for them becomes unreadable), their NIN token and the
    originals of their dead letters go; states, acks and the trail stay for reconciliation."""
    from router.erasure import ErasureRefused, erase_member

    jokko = jokko_db()
    try:
        report = erase_member(
            jokko.engine,
            member_id,
            retention_days=jokko.settings.erasure_retention_days,
            actor=actor(),
            reason=reason,
        )
    except ErasureRefused as exc:
        Console(stderr=True).print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    Console().print(report)


audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    head: Annotated[
        str | None,
        typer.Option(
            help="A head hash recorded by an earlier run: it must still be in the chain, which "
            "is what shows rows cut off at the end."
        ),
    ] = None,
) -> None:
    """Walk the audit chain: exit 0 with the rows checked and the head to record, or 1 naming
    the first row altered, inserted or removed."""
    from router.audit import verify

    try:
        engine = bootstrap(load_settings(), kafka=False).engine
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        verdict = verify(engine, head=head.strip().lower() if head else None)
    finally:
        engine.dispose()
    if not verdict.ok:
        typer.echo(f"audit log broken ({verdict.checked} rows good): {verdict.problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"audit log intact: {verdict.checked} rows checked")
    if verdict.head_id is not None:
        typer.echo(f"head: row {verdict.head_id} {verdict.head_hash}")


contracts_app = typer.Typer(no_args_is_help=True, help="API and stream contracts (openapi/).")
app.add_typer(contracts_app, name="contracts")
DEFAULT_CONTRACTS_DIR = Path(__file__).resolve().parent.parent.parent / "openapi"


@contracts_app.command("export")
def contracts_export(
    out: Annotated[Path, typer.Option(help="Folder to write the contracts to.")] = (
        DEFAULT_CONTRACTS_DIR
    ),
) -> None:
    """Write openapi.json and asyncapi.yaml (committed, drift-checked); connects to nothing."""
    from services.contracts import export_contracts

    written = export_contracts(out)
    Console().print(f"wrote {', '.join(p.name for p in written)} to {out}")


@app.command(
    epilog="Scheduled runs, e.g. this crontab line (06:00 on the 5th of each month: CSS and "
    "IPRES for the month that just closed, one report folder per run):\n\n"
    "0 6 5 * * cd /srv/jokko && jokko reconcile --institution css --institution ipres "
    "--period previous --out 'reports/{period}-{run}'"
)
def reconcile(
    ledger: Annotated[
        Path | None, typer.Argument(help="MSNAS ledger export (CSV); default ledger.csv in --dir.")
    ] = None,
    cmu: Annotated[Path | None, typer.Option(help="CMU FHIR NDJSON extract.")] = None,
    css: Annotated[Path | None, typer.Option(help="CSS CSV statement.")] = None,
    ipres: Annotated[Path | None, typer.Option(help="IPRES statement file.")] = None,
    institution: Annotated[
        list[str] | None,
        typer.Option(
            "--institution",
            "-i",
            help="Only this institution (repeatable); its extract defaults to cmu.ndjson, "
            "css.csv or ipres.txt in --dir.",
        ),
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(
            help="Months to report on: YYYY-MM, YYYY-MM..YYYY-MM, or 'previous' (the last "
            "closed month, resolved when the run starts: a crontab line stays right)."
        ),
    ] = None,
    folder: Annotated[
        Path | None,
        typer.Option("--dir", help="Folder of the files; default JOKKO_RECONCILE_DIR."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for report.json, report.csv, report.html; {run} and {period} in it "
            "are replaced (one folder per scheduled run)."
        ),
    ] = None,
    redrive: Annotated[
        bool, typer.Option(help="Re-drive every missing record through the router.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(min=1, help="Processes sharing the comparison (by member id range)."),
    ] = 1,
    engine: Annotated[
        str,
        typer.Option(
            help="duckdb (columnar, 2 threads; a file it cannot read exactly goes to python) "
            "or python (sort-merge in --workers processes). Same discrepancies either way."
        ),
    ] = "duckdb",
) -> None:
    """Compare the mutual's ledger with the institutions' extracts; keep the run and report."""

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from services.reconcile import Scope, parse_period
    from services.reconcile_cli import reconcile_command, resolve_sources
    from services.reconcile_runs import reconcile_dir
    from services.reconcile_shards import ENGINES

    try:
        if engine not in ENGINES:
            raise ValueError(f"--engine must be one of {', '.join(ENGINES)}")
        scope = Scope(*parse_period(period, datetime.now(UTC).date())) if period else Scope()
        ledger, extracts = resolve_sources(
            folder or reconcile_dir(),
            ledger,
            {"cmu": cmu, "css": css, "ipres": ipres},
            [i.lower() for i in institution or []],
        )
    except ValueError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    db = bootstrap(load_settings(), kafka=False).engine
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("reconciling", total=ledger.stat().st_size)
        reconcile_command(
            db, actor(), ledger, extracts, out, redrive, lambda n: bar.advance(task, n), scope,
            workers, engine,
        )  # fmt: skip
