"""``jokko keys``: the keyring (data, token and message keys, topic key files) and the keys
signing the API's access tokens."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from adapters.base import Institution
from schemas.errors import JokkoError
from services.cli.wiring import actor, authority, jokko_db
from services.settings import load_settings

keys_app = typer.Typer(no_args_is_help=True, help="Keys signing the API's access tokens.")


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
        Console().print(f"new signing key {authority().rotate(actor=actor())}")
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

    jokko = jokko_db()
    counts = rewrap(jokko.engine, jokko.vault)
    Console().print(", ".join(f"{n} {what}" for what, n in counts.items()) + " re-sealed")
