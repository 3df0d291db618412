"""The ``jokko`` command line."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adapters.base import Institution
from schemas.errors import JokkoError
from services.bootstrap import Jokko, bootstrap, stop_on_signals
from services.settings import InvalidSettings, Settings, load_settings

if TYPE_CHECKING:
    from services.api.security import Authority

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
    from services.api.security import RateLimiter

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


clients_app = typer.Typer(no_args_is_help=True, help="API clients (OAuth2 client credentials).")
keys_app = typer.Typer(no_args_is_help=True, help="Keys signing the API's access tokens.")
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")


def _authority() -> Authority:
    """The database only: client and key changes must work while Kafka is down."""
    from services.api.security import Authority

    try:
        jokko = bootstrap(load_settings(), kafka=False)
        return Authority(jokko.engine, vault=jokko.vault)
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


def _actor() -> str:
    """The operating-system user, so the audit log says who ran the command."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):
        return "cli"


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
    from services.api.security import ClientAdminError

    try:
        secret = _authority().add_client(
            client_id, scope, institution=institution, description=description, actor=_actor()
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
    from services.api.security import ClientAdminError

    try:
        _authority().revoke_client(client_id, actor=_actor())
    except ClientAdminError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    Console().print(f"revoked {client_id}")


@clients_app.command("list")
def clients_list() -> None:
    """Clients, their scopes and status (never their secrets)."""
    table = Table("client", "institution", "scopes", "created", "status", "description")
    for c in _authority().clients():
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


class KeyKind(StrEnum):
    SIGNING = "signing"
    """The API's access-token signing keys: in the database, shared by the API replicas, each
    sealed under the keyring's current data key (``jokko keys rewrap`` re-seals them)."""
    DATA = "data"
    """The keyring's key-encryption keys (members' data keys, dead letters)."""
    TOKEN = "token"
    """The keyring's NIN-token keys."""
    MESSAGE = "message"
    """The keyring's Ed25519 keys signing what Jokko sends (pushes, batches, IPRES files)."""


@keys_app.command("create")
def keys_create() -> None:
    """Make the keyring (JOKKO_KEYRING_FILE) if there is none; never overwrites one."""
    from services import keyring

    path = load_settings().keyring_file
    if keyring.create(path):
        Console().print(f"new keyring at {path} (mode 0600): back it up, away from the database")
    else:
        Console().print(f"a keyring is already at {path}: left as it is")


@keys_app.command("list")
def keys_list() -> None:
    """The keyring's key ids, which one is current (never the keys themselves)."""
    from services import keyring

    try:
        rows = keyring.describe(load_settings().keyring_file)
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    table = Table("kind", "key id", "current")
    for kind, kid, current in rows:
        table.add_row(kind, kid, "yes" if current else "")
    Console(width=200).print(table)


@keys_app.command("rotate")
def keys_rotate(
    kind: Annotated[KeyKind, typer.Argument(help="signing, data, token or message.")],
) -> None:
    """A new current key of KIND; the previous ones stay to open (or verify) what they made.

    data: members' keys move to the new key as their events are routed, or all at once with
    `jokko keys rewrap`. token: NINs tokenised under an older key are still found. signing:
    the old key verifies its tokens until they expire, then leaves the JWKS. message: the
    relay signs with the new key once restarted; the old one stays in the message-keys JWKS."""
    from services import keyring

    if kind is KeyKind.SIGNING:
        Console().print(f"new signing key {_authority().rotate(actor=_actor())}")
        return
    path = load_settings().keyring_file
    kinds: dict[KeyKind, keyring.Kind] = {
        KeyKind.DATA: "data",
        KeyKind.TOKEN: "token",
        KeyKind.MESSAGE: "message",
    }
    kid = keyring.rotate(path, kinds[kind])
    Console().print(
        f"new {kind.value} key {kid} in {path}: restart the router, relay and API to use it"
    )


@keys_app.command("topic")
def keys_topic(
    institution: Annotated[Institution, typer.Argument(help="The institution reading its topic.")],
) -> None:
    """Make the topic key file of INSTITUTION (JOKKO_<INST>__TOPIC_KEY_FILE), or add a new
    current key to it. Hand the file to that institution (its consumer opens its topic's
    records with it), then restart the relay; earlier keys stay in the file, to open the
    records still on the topic."""
    from services import keyring

    path = getattr(load_settings(), institution.value).topic_key_file
    if path is None:
        Console(stderr=True).print(
            f"[red]error:[/] set JOKKO_{institution.value.upper()}__TOPIC_KEY_FILE first"
        )
        raise typer.Exit(2)
    try:
        kid = keyring.topic_key(path, institution.value)
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    Console().print(
        f"new topic key {kid} for {institution.value} in {path}: hand the file to "
        f"{institution.value.upper()} (and to no one else), then restart the relay"
    )


@keys_app.command("rewrap")
def keys_rewrap() -> None:
    """Re-seal, now, everything sealed under an older data key (and what is still in clear
    from before encryption at rest, the API's signing keys included): after a rotation,
    before an old key is retired."""
    from router.sealing import rewrap

    jokko = _jokko_db()
    counts = rewrap(jokko.engine, jokko.vault)
    Console().print(", ".join(f"{n} {what}" for what, n in counts.items()) + " re-sealed")


@app.command()
def erase(
    member_id: Annotated[str, typer.Argument(help="The member whose personal data goes.")],
    reason: Annotated[str, typer.Option(help="The request it answers (kept in the audit log).")],
) -> None:
    """Erase a member's personal data once the retention period is over: their data key is
    destroyed (every message Jokko keeps for them becomes unreadable), their NIN token and the
    originals of their dead letters go; states, acks and the trail stay for reconciliation."""
    from router.erasure import ErasureRefused, erase_member

    jokko = _jokko_db()
    try:
        report = erase_member(
            jokko.engine,
            member_id,
            retention_days=jokko.settings.erasure_retention_days,
            actor=_actor(),
            reason=reason,
        )
    except ErasureRefused as exc:
        Console(stderr=True).print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    Console().print(report)


def _jokko_db() -> Jokko:
    """The database only: key and erasure work must not wait for Kafka."""
    try:
        return bootstrap(load_settings(), kafka=False)
    except JokkoError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None


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


@app.command("evidence")
def evidence(
    target: Annotated[
        list[str],
        typer.Argument(
            help="MESSAGE_ID: write its evidence bundle; 'verify BUNDLE': check one offline; "
            "'verify-log': walk the whole message log; 'checkpoint': sign its head.",
            metavar="MESSAGE_ID | verify BUNDLE | verify-log | checkpoint",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the bundle (default: standard output).")
    ] = None,
    message_only: Annotated[
        bool,
        typer.Option(
            "--message-only",
            help="For a message sent in a batch or file: leave the batch's other messages out "
            "(their digests only; Jokko's signature over the whole is then not checkable).",
        ),
    ] = False,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="verify: a published checkpoint whose head the bundle must hold."),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(help="verify-log: from the first row sent at this time (UTC) or later."),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(help="verify-log: a published head hash that must still be in the chain."),
    ] = None,
) -> None:
    """Proof of delivery: `jokko evidence MESSAGE_ID` writes the message's evidence bundle
    (its bytes, Jokko's signature and public key, its message-log row and the chain to the
    head, the receipt); `jokko evidence verify BUNDLE` checks one offline, exit 1 naming what
    fails; `jokko evidence verify-log` walks the whole log, exit 1 naming the first row at
    fault; `jokko evidence checkpoint` writes the head signed with Jokko's message key."""
    if target[0] == "verify":
        _evidence_verify(target, checkpoint)
    elif target == ["verify-log"]:
        _evidence_verify_log(since, head)
    elif target == ["checkpoint"]:
        _evidence_checkpoint(out)
    elif len(target) == 1:
        _evidence_bundle(target[0], out, whole=not message_only)
    else:
        Console(stderr=True).print("[red]error:[/] one MESSAGE_ID, or verify BUNDLE")
        raise typer.Exit(2)


def _read_json(path: Path, what: str) -> Any:
    import json

    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        typer.echo(f"{what} unreadable: {exc}", err=True)
        raise typer.Exit(1) from None
    if not isinstance(doc, dict):
        typer.echo(f"{what}: not a JSON object", err=True)
        raise typer.Exit(1)
    return doc


def _evidence_verify(target: list[str], checkpoint: Path | None) -> None:
    from router import msglog

    if len(target) != 2:
        Console(stderr=True).print("[red]error:[/] usage: jokko evidence verify BUNDLE")
        raise typer.Exit(2)
    doc = _read_json(Path(target[1]), "evidence bundle")
    problems = msglog.check(doc)
    if checkpoint is not None and not problems:
        problems = msglog.check_checkpoint(_read_json(checkpoint, "checkpoint"), doc)
    if problems:
        for p in problems:
            typer.echo(f"evidence fails: {p}", err=True)
        raise typer.Exit(1)
    last = ([doc["log_row"], *doc["chain"]])[-1]
    typer.echo(
        f"evidence verified: message {doc['message_id']} ({msglog.what_verified(doc)}), "
        f"{1 + len(doc['chain'])} chain rows to head row {last['id']} {last['row_hash']}"
        + (f", holding checkpoint {checkpoint}" if checkpoint is not None else "")
    )


def _evidence_verify_log(since: datetime | None, head: str | None) -> None:
    from router import msglog

    app_ = _jokko_db()
    try:
        verdict = msglog.verify(
            app_.engine,
            since=since.replace(tzinfo=since.tzinfo or UTC) if since else None,
            head=head.strip().lower() if head else None,
        )
    finally:
        app_.engine.dispose()
    if not verdict.ok:
        typer.echo(f"message log broken ({verdict.checked} rows good): {verdict.problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"message log intact: {verdict.checked} rows checked")
    if verdict.head_id is not None:
        typer.echo(f"head: row {verdict.head_id} {verdict.head_hash}")


def _evidence_checkpoint(out: Path | None) -> None:
    import json

    from router import msglog
    from router.store import utcnow

    app_ = _jokko_db()
    try:
        doc = msglog.checkpoint(app_.engine, app_.message_keys.current, utcnow())
    except msglog.NoEvidence as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        app_.engine.dispose()
    _write_out(json.dumps(doc, indent=1) + "\n", out, f"checkpoint of row {doc['id']}")


def _evidence_bundle(message_id: str, out: Path | None, *, whole: bool) -> None:
    import json

    from router import msglog

    app_ = _jokko_db()
    try:
        doc = msglog.evidence(
            app_.engine,
            app_.vault,
            app_.message_keys,
            message_id,
            topic_keys={i.value: k for i, k in app_.topic_keys().items()},
            whole=whole,
        )
    except msglog.NoEvidence as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        app_.engine.dispose()
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    _write_out(text, out, f"evidence bundle for {message_id}")


def _write_out(text: str, out: Path | None, what: str) -> None:
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        Console(stderr=True).print(f"{what} written to {out}")


contracts_app = typer.Typer(no_args_is_help=True, help="API and stream contracts (openapi/).")
app.add_typer(contracts_app, name="contracts")
DEFAULT_CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "openapi"


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
    from datetime import UTC, datetime

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
            db, _actor(), ledger, extracts, out, redrive, lambda n: bar.advance(task, n), scope,
            workers, engine,
        )  # fmt: skip
