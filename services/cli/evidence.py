"""`jokko evidence`: proof of delivery from the message log (router/msglog.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from services.cli.wiring import jokko_db


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

    app_ = jokko_db()
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

    app_ = jokko_db()
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

    app_ = jokko_db()
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
