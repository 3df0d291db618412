"""Mutual TLS to the institutions, with the real relay, broker and PostgreSQL.

The fakes serve HTTPS with certificates of a throw-away CA (tests/tls.py) and require Jokko's
client certificate. Each way the handshake can go wrong — a CA that did not sign the server's
certificate, no client certificate, an expired one on either side, a certificate for another
host or revoked by the CA's list in settings, a server that does not speak TLS — leaves CSS
with nothing received: the delivery is retried with the reason named in ``last_error`` and
goes dead with it. CMU, reached with the right files, is accepted meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.store import DeadLetterRow, DeliveryState, Stage, TrailRow
from tests.factories import enrolments
from tests.fakes.server import serve
from tests.integration import test_partners
from tests.integration.test_partners import Partners, Run
from tests.tls import CertificateAuthority, KeyPair, ServerTLS, TestPki

pytestmark = pytest.mark.integration

partners = test_partners.partners
start = test_partners.start


def test_pushes_over_mutual_tls_are_accepted_end_to_end(
    start: Callable[..., Run], partners: Partners
) -> None:
    assert str(partners.settings["css"]["url"]).startswith("https://")  # type: ignore[index]
    run = start(enrolments(4))
    run.wait(lambda: run.unfinished() == 0, 60, "every delivery to end")
    rows = [r for r in run.rows() if r.institution in ("cmu", "css")]
    assert {r.institution for r in rows} == {"cmu", "css"}
    assert all(r.state == DeliveryState.ACCEPTED for r in rows)
    for fake, inst in ((partners.cmu, "cmu"), (partners.css, "css")):
        assert {m.message_id for m in fake.received} == {
            r.message_id for r in rows if r.institution == inst
        }


@dataclass(frozen=True)
class Refusal:
    """How CSS is served (``None``: plain HTTP), what Jokko is given, and the reason it names."""

    server: Callable[[TestPki, Path], ServerTLS | None]
    jokko: Callable[[TestPki, Path], dict[str, object]]
    reason: str


def _right(pki: TestPki, _dir: Path) -> dict[str, object]:
    return pki.partner_settings()


def _requiring_jokko(pki: TestPki, _dir: Path) -> ServerTLS:
    return pki.server_tls()


def _other_ca(pki: TestPki, directory: Path) -> dict[str, object]:
    return {**pki.partner_settings(), "ca_file": CertificateAuthority(directory, "Other CA").cert}


def _no_client_certificate(pki: TestPki, _dir: Path) -> dict[str, object]:
    return {"ca_file": pki.ca}


def _expired_client(pki: TestPki, _dir: Path) -> dict[str, object]:
    old = pki.authority.issue("old-client", server=False, expired=True)
    return {**pki.partner_settings(), "client_cert_file": old.cert, "client_key_file": old.key}


def _expired_server(pki: TestPki, _dir: Path) -> ServerTLS:
    old = pki.authority.issue("old-server", server=True, expired=True)
    return ServerTLS(old.cert, old.key, pki.ca)


def _server_for_another_host(pki: TestPki, _dir: Path) -> ServerTLS:
    elsewhere = pki.authority.issue("elsewhere", server=True, hosts=("css.example",))
    return ServerTLS(elsewhere.cert, elsewhere.key, pki.ca)


def _revoked_server(pki: TestPki, _dir: Path) -> ServerTLS:
    revoked = pki.authority.issue("revoked-server", server=True)
    return ServerTLS(revoked.cert, revoked.key, pki.ca)


def _revocation_list(pki: TestPki, _dir: Path) -> dict[str, object]:
    revoked = KeyPair(*(pki.authority.directory / f for f in ("revoked-server.pem", "x")))
    return {**pki.partner_settings(), "crl_file": pki.authority.revocation_list("ca", revoked)}


def _plain_http(_pki: TestPki, _dir: Path) -> None:
    return None


REFUSALS = {
    "ca_that_did_not_sign_the_server": Refusal(
        _requiring_jokko, _other_ca, "tls: the server's certificate is refused:"
    ),
    "no_client_certificate": Refusal(
        _requiring_jokko,
        _no_client_certificate,
        "tls: the institution requires a client certificate",
    ),
    "expired_client_certificate": Refusal(
        _requiring_jokko,
        _expired_client,
        "tls: the institution refused Jokko's client certificate as expired",
    ),
    "expired_server_certificate": Refusal(
        _expired_server, _right, "tls: the server's certificate is refused: certificate has expired"
    ),
    "server_certificate_for_another_host": Refusal(
        _server_for_another_host, _right, "certificate is not valid for '127.0.0.1'"
    ),
    "server_certificate_revoked": Refusal(
        _revoked_server,
        _revocation_list,
        "tls: the server's certificate is refused: certificate revoked",
    ),
    "server_without_tls": Refusal(_plain_http, _right, "tls: the server does not speak TLS"),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_a_failed_handshake_sends_nothing_and_the_delivery_dies_with_its_reason(
    case: str, start: Callable[..., Run], partners: Partners, tmp_path: Path
) -> None:
    refusal = REFUSALS[case]
    css = partners.css
    tls = refusal.server(partners.pki, tmp_path / "other")
    with serve(css.app, tls=tls) as url:
        css_url = url.replace("http://", "https://") + "/css/v1/documents"
        css_settings = {
            **partners.settings["css"],  # type: ignore[dict-item]
            "url": css_url,
            "ca_file": None,
            "client_cert_file": None,
            "client_key_file": None,
            "crl_file": None,
            **refusal.jokko(partners.pki, tmp_path / "other"),
        }
        began = time.monotonic()
        run = start(enrolments(3), css=css_settings, delivery_max_attempts=3)
        run.wait(lambda: run.unfinished() == 0, 60, "every delivery to end")
        took = time.monotonic() - began

    rows = run.rows()
    css_rows = [r for r in rows if r.institution == Institution.CSS]
    assert len(css_rows) == 3
    assert all(r.state == DeliveryState.DEAD for r in css_rows)
    assert all(refusal.reason in (r.last_error or "") for r in css_rows), [
        r.last_error for r in css_rows
    ]
    assert all(r.attempts == 3 and r.sent_at is None for r in css_rows)
    # nothing reached CSS's application: no request, no message received
    assert css.requests.total == 0
    assert css.received == []
    with Session(run.app.engine) as s:
        dead = list(s.scalars(select(DeadLetterRow).where(DeadLetterRow.institution == "css")))
    assert sorted(d.message_id or "" for d in dead) == sorted(r.message_id for r in css_rows)
    assert all(d.reason == "retries_exhausted" and refusal.reason in d.detail for d in dead)
    # before dying, each was pending for another try with the reason on its trail
    with Session(run.app.engine) as s:
        trail = s.execute(
            select(TrailRow.message_id, TrailRow.stage, TrailRow.detail)
            .where(TrailRow.institution == "css")
            .order_by(TrailRow.id)
        ).all()
    for r in css_rows:
        stages = [(stage, detail or "") for m, stage, detail in trail if m == r.message_id]
        assert [stage for stage, _ in stages][-3:] == [Stage.RETRYING, Stage.RETRYING, Stage.DEAD]
        assert all(refusal.reason in detail for _, detail in stages[-3:])
    # CMU, reached with the right certificates, is not held up by CSS's refusals
    assert all(r.state == DeliveryState.ACCEPTED for r in rows if r.institution == "cmu")
    print(f"{case}: 3 CSS deliveries dead after 3 attempts in {took:.1f} s: {dead[0].detail}")
