"""The operator console in a real headless Chromium (Debian's, driven by Playwright), over the
API served by a real uvicorn with the real broker and PostgreSQL, a real router and relay, and
delivery to the fake institutions over HTTP and files: log in as an operator, find a member's
event and its trail, replay a delivery that died while CSS was down and see it accepted, read a
reconciliation report with its chart. Screenshots go to the test's ``tmp_path``."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.base import Institution
from router.audit import verify
from router.processing import RawRecord
from router.store import AuditRow, DeadLetterRow, DeliveryState
from services.api.auth import Authority, Scope
from services.api.console import COOKIE, csrf_token
from services.reconcile import INSTITUTIONS
from services.reconcile_data import generate
from tests.factories import enrolments
from tests.integration.test_api import Api, _reconciled
from tests.integration.test_partners import Partners, Run

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium calls home at start, and this closed network refuses it.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OPERATOR_SCOPES = [Scope.EVENTS_READ, Scope.DELIVERIES_READ, Scope.DEAD_LETTERS, Scope.RECONCILE]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium (scripts/browser.sh installs it); Playwright's own builds are never
    downloaded. The sync API runs its own loop in a greenlet: no asyncio loop runs in the test
    thread (uvicorn serves from threads of its own), so the two never meet."""
    assert CHROMIUM.exists(), "run scripts/browser.sh install"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context per test: its own profile, cookies and storage."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        yield context.new_page()
    finally:
        context.close()


def operator(api: Api, name: str = "console-operator") -> str:
    """A new operator client in the API's store; returns its secret."""
    return Authority(api.jokko.engine).add_client(name, [s.value for s in OPERATOR_SCOPES])


def log_in(page: Page, url: str, client_id: str, secret: str) -> None:
    page.goto(f"{url}/console/")
    assert page.url.startswith(f"{url}/console/login"), "a page without a session asks to log in"
    page.fill("input[name=client_id]", client_id)
    page.fill("input[name=client_secret]", secret)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/console/")


def state_at(page: Page, url: str, event_id: str, institution: str) -> str:
    page.goto(f"{url}/console/events/{event_id}")
    return page.inner_text(f"#event-deliveries tr[data-institution={institution}] td.state")


def trail_of(page: Page, institution: str) -> list[str]:
    """The stages of the trail shown for one institution, in order."""
    stages = page.locator("#trail td.stage").all_inner_texts()
    institutions = page.locator("#trail td.institution").all_inner_texts()
    return [s for s, i in zip(stages, institutions, strict=True) if i == institution]


def test_operator_finds_an_event_replays_a_dead_delivery_and_reads_a_report(
    api: Api,
    partners: Partners,
    start: Callable[..., Run],
    page: Page,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    began = time.monotonic()
    partners.css.faults.down = True
    [event] = enrolments(1)
    member, event_id = event.member_id, str(event.event_id)
    run = start([event], delivery_max_attempts=2)
    run.wait(
        lambda: (
            {r.institution: r.state for r in run.rows()}.get("css") == DeliveryState.DEAD
            and run.unfinished() == 0
        ),
        60,
        "the CSS delivery to die and the others to end",
    )
    secret = operator(api)
    url = api.url

    log_in(page, url, "console-operator", secret)
    flow = {
        row.get_attribute("data-institution"): {
            cell.get_attribute("data-state"): int(cell.inner_text())
            for cell in row.query_selector_all("td[data-state]")
        }
        for row in page.query_selector_all("#flow tr[data-institution]")
    }
    expected = {
        inst: {
            s.value: sum(1 for r in run.rows() if r.institution == inst and r.state == s)
            for s in DeliveryState
        }
        for inst in ("cmu", "css", "ipres")
    }
    assert flow == expected, "the flow page counts the store's deliveries by state"
    assert flow["css"]["dead"] == 1

    # find the member's event by member id, open its trail
    page.fill("#search input[name=q]", member)
    page.click("#search button[type=submit]")
    page.click(f"#member-events a:has-text('{event_id}')")
    page.wait_for_url(f"{url}/console/events/{event_id}")
    stages = page.locator("#trail td.stage").all_inner_texts()
    assert stages[:2] == ["received", "routed"]
    assert trail_of(page, "css")[-1] == "dead", "the trail shows the CSS delivery dying"
    assert state_at(page, url, event_id, "css") == "dead"
    # an event id finds the event too
    page.goto(f"{url}/console/events")
    page.fill("#search input[name=q]", event_id)
    page.click("#search button[type=submit]")
    page.wait_for_url(f"{url}/console/events/{event_id}")

    # CSS is back: replay the dead letter from the console
    partners.css.faults.down = False
    page.goto(f"{url}/console/dead-letters")
    with Session(api.jokko.engine) as s:
        [dead] = s.scalars(select(DeadLetterRow)).all()
    row = page.locator(f"#dead-letters tr[data-id='{dead.id}']")
    assert dead.institution == "css"
    assert event_id in row.inner_text()
    page.screenshot(path=tmp_path / "console-dead-letters.png", full_page=True)
    row.locator("button[name=replay]").click()
    page.wait_for_url(re.compile(r".*/console/dead-letters\?done="))
    assert page.inner_text("p.notice") == f"Dead letter {dead.id}: redelivered."
    assert page.locator(f"#dead-letters tr[data-id='{dead.id}']").count() == 0, "no longer open"

    deadline = time.monotonic() + 60
    while (css := state_at(page, url, event_id, "css")) != "accepted":
        assert time.monotonic() < deadline, f"CSS delivery still {css} after the replay"
        time.sleep(0.3)
    css_stages = trail_of(page, "css")
    assert css_stages.index("dead") < css_stages.index("accepted"), "accepted after the replay"
    assert css_stages[-1] == "accepted"
    assert [m.message_id for m in partners.css.received] == [
        r.message_id for r in run.rows() if r.institution == "css"
    ], "CSS holds the message once"
    trail_png = tmp_path / "console-event-trail.png"
    page.screenshot(path=trail_png, full_page=True)

    with Session(api.jokko.engine) as s:
        audit = [
            (a.actor, a.action, a.target, a.member_id)
            for a in s.scalars(select(AuditRow).where(AuditRow.actor == "console-operator"))
        ]
    assert ("console-operator", "console.login", None, None) in audit
    assert ("console-operator", "dead_letter.replay", f"dead_letter:{dead.id}", member) in audit
    # the console's reads of the member's data, each named with the page that showed it
    assert ("console-operator", "read.member_events", "GET /console/events", member) in audit
    event_page = ("console-operator", "read.event", f"GET /console/events/{event_id}", member)
    assert event_page in audit

    # a reconciliation run, started over the API, read in the console with its chart
    monkeypatch.setenv("JOKKO_RECONCILE_DIR", str(tmp_path))
    buffers = {k: io.StringIO(newline="") for k in ("ledger", *INSTITUTIONS)}
    truth = generate(40, 2, {k: b.write for k, b in buffers.items()}, rate=0.05, seed=7).truth
    for name, buffer in buffers.items():
        (tmp_path / f"{name}.txt").write_text(buffer.getvalue(), encoding="utf-8", newline="")
    with api.client("operator") as op:
        started = op.post(
            "/v1/reconciliations",
            json={"ledger": "ledger.txt", **{i: f"{i}.txt" for i in INSTITUTIONS}},
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["id"]
        _reconciled(op, run_id)
    page.goto(f"{url}/console/reconciliations")
    page.click(f"#runs a:text-is('{run_id}')")
    page.wait_for_url(f"{url}/console/reconciliations/{run_id}")
    report = page.frame_locator("#report")
    assert report.locator("h1").inner_text() == f"Reconciliation run {run_id}"
    assert report.locator("svg[aria-label='Discrepancies by region and period'] rect").count() > 0
    assert f"{len(truth)} discrepancies" in report.locator("p").first.inner_text()
    report.locator("svg").scroll_into_view_if_needed()
    with Session(api.jokko.engine) as s:
        [read] = s.scalars(
            select(AuditRow).where(AuditRow.action == "read.reconciliation_report")
        ).all()
    assert (read.actor, read.target, read.member_id) == (
        "console-operator",
        f"GET /console/reconciliations/{run_id}/report",
        None,
    )
    assert read.detail == f"run {run_id}: {len(truth)} discrepancies, html"
    assert verify(api.jokko.engine).ok
    report_png = tmp_path / "console-reconciliation.png"
    page.screenshot(path=report_png, full_page=True)

    print(
        f"console e2e in {time.monotonic() - began:.1f}s; screenshots: {trail_png} "
        f"{tmp_path / 'console-dead-letters.png'} {report_png}"
    )


def test_console_refuses_forms_from_elsewhere_and_non_operators(api: Api) -> None:
    secret = operator(api, "console-op2")
    with httpx.Client(base_url=api.url, timeout=30) as c:
        assert c.get("/console/").status_code == 303, "no session: to the login page"
        assert c.get("/console/").headers["location"].startswith("/console/login")
        # an institution's client is not an operator
        css_secret = Authority(api.jokko.engine).add_client(
            "css-console", [Scope.DELIVERIES_READ.value], institution=Institution.CSS
        )
        r = c.post("/console/login", data={"client_id": "css-console", "client_secret": css_secret})
        assert r.status_code == 403
        assert COOKIE not in c.cookies
        r = c.post("/console/login", data={"client_id": "console-op2", "client_secret": "wrong"})
        assert r.status_code == 401
        # a login posted from another origin is refused before the secret is checked
        r = c.post(
            "/console/login",
            data={"client_id": "console-op2", "client_secret": secret},
            headers={"Origin": "http://127.0.0.1:1"},
        )
        assert r.status_code == 403
        assert COOKIE not in c.cookies
        r = c.post("/console/login", data={"client_id": "console-op2", "client_secret": secret})
        assert r.status_code == 303
        set_cookie = r.headers["set-cookie"].lower()
        for attribute in ("httponly", "samesite=strict", "path=/console"):
            assert attribute in set_cookie
        token = c.cookies[COOKIE]
        dead = _a_dead_letter(api)
        replay = f"/console/dead-letters/{dead}/replay"
        # no CSRF token, a wrong one, or the right one from another origin: refused, no effect
        assert c.post(replay, data={"x": "1"}).status_code == 403
        assert c.post(replay, data={"csrf": csrf_token(token + "x")}).status_code == 403
        r = c.post(
            replay, data={"csrf": csrf_token(token)}, headers={"Origin": "http://evil.example"}
        )
        assert r.status_code == 403
        with Session(api.jokko.engine) as s:
            assert s.get_one(DeadLetterRow, dead).replayed_at is None
        # a discard needs a reason; with one it is done and audited with it
        discard = f"/console/dead-letters/{dead}/discard"
        assert c.post(discard, data={"csrf": csrf_token(token), "reason": ""}).status_code == 422
        r = c.post(discard, data={"csrf": csrf_token(token), "reason": "duplicate of #7"})
        assert r.status_code == 303
        assert c.post(replay, data={"csrf": csrf_token(token)}).status_code == 409
        paths = c.get("/openapi.json").json()["paths"]
        assert not [p for p in paths if p.startswith("/console")], "not API operations"
    with Session(api.jokko.engine) as s:
        row = s.get_one(DeadLetterRow, dead)
        assert row.discarded_at is not None
        assert row.replayed_at is None
        audit = s.scalars(select(AuditRow).where(AuditRow.action == "dead_letter.discard")).one()
        assert (audit.actor, audit.detail) == ("console-op2", "duplicate of #7")


def _a_dead_letter(api: Api) -> int:
    """A poison record on the canonical topic, dead-lettered by the real processor."""
    api.jokko.processor().process(RawRecord(api.jokko.topics.canonical, 0, 0, b"not an event"))
    with Session(api.jokko.engine) as s:
        [dead] = s.scalars(select(DeadLetterRow.id)).all()
    return dead
