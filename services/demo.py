"""``jokko demo``: a month of a regional mutual flowing to the three institutions, reconciled.

It runs the real pieces, each as its own process, the way a deployment does: the API, the
router and the relay (``jokko api|router|relay``) on an embedded SQLite store, and the three
fake institutions (``python -m tests.fakes``: CMU and CSS over signed HTTP on mutual TLS, with
a throw-away CA the fakes make, IPRES by file exchange). The demo then plays the mutual and
the institutions' IT staff: it submits the month through the API, makes CSS flap, has CMU
reject one member and slips a poison record onto the canonical topic; it waits until every
delivery is final, prints the tally, reconciles the mutual's ledger with the extracts the
institutions return, re-drives what is missing once CSS is healthy again and reconciles
again. Everything it starts it stops on the way out.

The Kafka broker is the caller's (``scripts/demo.sh`` starts a throw-away one).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.msnas.ledger import header_line, ledger_line
from router.broker import idempotent_producer
from router.broker import wait_until_ready as wait_for_broker
from router.envelope import seal_canonical
from router.store import DeadLetterRow, DeliveryState, InboxRow, MemberDuplicateRow, OutboxRow
from router.vault import Vault
from schemas.errors import JokkoError
from services.api.security import Authority, Scope
from services.bootstrap import bootstrap
from services.demo_data import DUPLICATE_EVERY, Month, generate_month, previous_period
from services.reconcile import INSTITUTIONS
from services.reconcile_runs import EXTRACT_NAMES
from services.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
FINAL = (DeliveryState.ACCEPTED, DeliveryState.REJECTED, DeliveryState.DEAD)
BATCH = 250
CSS_ERROR_RATE = 0.3
MAX_ATTEMPTS = 2
"""Small on purpose: with CSS failing 30% of requests about a tenth of its messages use up
their two tries and go dead, which the first reconciliation then finds missing."""
PUSH_BATCH = 50
"""Messages per HTTP push to CMU (its batch envelope, FORMAT.md). CSS gets one message a request,
so that its flapping strikes messages one by one and the reconciliation has something to find."""


class DemoFailed(JokkoError):
    """A step of the demo did not happen the way the flow promises."""


@dataclass
class Options:
    members: int = 2000
    workdir: Path = Path(".jokko/demo")
    exit_at_end: bool = False
    timeout_s: float = 600.0
    seed: int = 2026


@dataclass
class Tally:
    """Deliveries per institution and state, from the store."""

    states: dict[str, Counter[str]] = field(default_factory=dict)

    def of(self, institution: str, state: DeliveryState) -> int:
        return self.states.get(institution, Counter())[state.value]

    def total(self, institution: str) -> int:
        return sum(self.states.get(institution, Counter()).values())


@dataclass
class Outcome:
    """What the demo observed, for its verdict and for tests."""

    submitted: int = 0
    refused_by_api: int = 0
    first: Tally = field(default_factory=Tally)
    final: Tally = field(default_factory=Tally)
    dead_letters: Counter[str] = field(default_factory=Counter)
    found: Counter[tuple[str, str]] = field(default_factory=Counter)
    after_redrive: Counter[tuple[str, str]] = field(default_factory=Counter)
    redrive: Counter[str] = field(default_factory=Counter)
    desk: Counter[str] = field(default_factory=Counter)
    css_requests: int = 0
    duplicates: int = 0
    """Enrolments flagged as the same NIN under another member id."""
    console_url: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Processes:
    """Child processes with their logs; stopped with SIGTERM in reverse order of start."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], *, stdout_pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        child = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE if stdout_pipe else log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches the demo only; it stops them in order
        )
        self.children.append((name, child, log))
        return child

    def check(self) -> None:
        for name, child, _ in self.children:
            if child.poll() is not None:
                raise DemoFailed(
                    f"{name} exited with {child.returncode}: see {self.logs / (name + '.log')}"
                )

    def stop(self) -> None:
        for _name, child, log in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            if child.stdout is not None:
                child.stdout.close()
            log.close()
        self.children.clear()


def _jokko_argv(command: str) -> list[str]:
    script = Path(sys.executable).with_name("jokko")
    if script.exists():
        return [str(script), command]
    return [sys.executable, "-c", "from services.cli import app; app()", command]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Demo:
    def __init__(self, settings: Settings, console: Console, options: Options) -> None:
        self.settings = settings
        self.console = console
        self.options = options
        self.work = options.workdir.resolve()
        self.outcome = Outcome()
        self.processes = Processes(self.work / "logs")
        self.api = ""
        self.control = ""
        self.tokens: dict[str, str] = {}

    # --- setting up ------------------------------------------------------------------------

    def _fresh_workdir(self) -> None:
        import shutil

        if self.work.exists():
            shutil.rmtree(self.work)
        for sub in ("logs", "reconcile", "partners"):
            (self.work / sub).mkdir(parents=True)

    def _start_partners(self) -> dict[str, Any]:
        if not (REPO / "tests" / "fakes" / "__main__.py").is_file():
            raise DemoFailed(
                "the fake institutions live in tests/fakes of a clone of the repository; "
                "run the demo from a clone (make demo)"
            )
        # CMU verifies Jokko's Ed25519 signature only (the default); CSS asks for the HMAC
        # as well (JOKKO_CSS__SIGNATURE=both). Both fetch Jokko's JWKS from the API.
        self.css_secret = secrets.token_urlsafe(32)
        self.api = f"http://127.0.0.1:{_free_port()}"
        env = {
            **os.environ,
            "JOKKO_FAKE_JWKS_URL": f"{self.api}/.well-known/jokko-message-keys.json",
            "JOKKO_FAKE_CSS_SECRET": self.css_secret,
        }
        env.pop("JOKKO_FAKE_CMU_SECRET", None)
        child = self.processes.start(
            "partners",
            [sys.executable, "-m", "tests.fakes", "--dir", str(self.work / "partners")],
            env,
            stdout_pipe=True,
        )
        assert child.stdout is not None
        line = _readline(child.stdout, 30)
        if not line:
            self.processes.check()
            raise DemoFailed("the fake institutions did not start within 30 s")
        ready: dict[str, Any] = json.loads(line)
        self.control = ready["control"]
        return ready

    def _environment(self, partners: dict[str, Any]) -> dict[str, str]:
        port = httpx.URL(self.api).port
        assert port is not None  # chosen in _start_partners
        return {
            "JOKKO_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "JOKKO_DATABASE_URL": f"sqlite:///{self.work / 'jokko.db'}",
            # The demo's own keyring beside its store: made at first start, kept with it.
            "JOKKO_KEYRING_FILE": str(self.work / "keyring.json"),
            "JOKKO_CANONICAL_TOPIC": self.settings.canonical_topic,
            "JOKKO_TOPIC_PREFIX": self.settings.topic_prefix,
            "JOKKO_API_HOST": "127.0.0.1",
            "JOKKO_API_PORT": str(port),
            "JOKKO_RECONCILE_DIR": str(self.work / "reconcile"),
            "JOKKO_ROUTER_INSTANCE_ID": "demo-router-1",
            "JOKKO_CMU__MODE": "http",
            "JOKKO_CMU__URL": partners["cmu"],
            "JOKKO_CMU__BATCH_SIZE": str(PUSH_BATCH),
            "JOKKO_CSS__MODE": "http",
            "JOKKO_CSS__URL": partners["css"],
            "JOKKO_CSS__SIGNATURE": "both",
            "JOKKO_CSS__SECRET": self.css_secret,
            "JOKKO_CSS__TIMEOUT_S": "5",
            **{
                f"JOKKO_{inst}__{name.upper()}": path
                for inst in ("CMU", "CSS")
                for name, path in partners["tls"].items()
            },
            "JOKKO_IPRES__MODE": "file",
            "JOKKO_IPRES__OUTBOX_DIR": partners["ipres"]["inbox"],
            "JOKKO_IPRES__ACK_DIR": partners["ipres"]["acks"],
            "JOKKO_DELIVERY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "JOKKO_DELIVERY_BACKOFF_INITIAL_S": "0.2",
            "JOKKO_DELIVERY_BACKOFF_MAX_S": "1",
            "JOKKO_DELIVERY_BREAKER_RESET_S": "1",
        }

    def _clients(self, authority: Authority) -> tuple[str, str]:
        mutual = authority.add_client(
            "msnas-demo", [Scope.EVENTS_SUBMIT, Scope.EVENTS_READ], description="demo: the mutual"
        )
        operator = authority.add_client(
            "operator-demo",
            [
                Scope.EVENTS_READ,
                Scope.DELIVERIES_READ,
                Scope.DEAD_LETTERS,
                Scope.RECONCILE,
            ],
            description="demo: the operators' console",
        )
        self.credentials = {"msnas-demo": mutual, "operator-demo": operator}
        return mutual, operator

    def _token(self, http: httpx.Client, client_id: str) -> dict[str, str]:
        if client_id not in self.tokens:
            answer = http.post(
                f"{self.api}/v1/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": self.credentials[client_id],
                },
            )
            answer.raise_for_status()
            self.tokens[client_id] = answer.json()["access_token"]
        return {"Authorization": f"Bearer {self.tokens[client_id]}"}

    def _wait_ready(self, http: httpx.Client, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.processes.check()
            try:
                if http.get(f"{self.api}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise DemoFailed(f"the API did not become ready within {timeout_s:.0f} s")

    def _faults(self, http: httpx.Client, institution: str, **knobs: object) -> None:
        http.put(f"{self.control}/faults/{institution}", json=knobs).raise_for_status()

    # --- the flow --------------------------------------------------------------------------

    def run(self) -> Outcome:
        c = self.console
        wait_for_broker(self.settings.kafka_bootstrap, timeout_s=min(60.0, self.options.timeout_s))
        self._fresh_workdir()
        period = previous_period(datetime.now(UTC))
        month = generate_month(self.options.members, period, seed=self.options.seed)
        c.rule(f"[bold]Jokko demo[/]: {len(month.members):,} MSNAS members, period {period}")
        with ExitStack() as stack:
            stack.callback(self.processes.stop)
            http = stack.enter_context(httpx.Client(timeout=60))
            partners = self._start_partners()
            env = self._environment(partners)
            jokko = bootstrap(load_settings(**_settings_of(env)))
            self.engine = jokko.engine
            self._clients(Authority(jokko.engine, vault=jokko.vault))
            child_env = {**os.environ, **env}
            for name in ("router", "relay", "api"):
                self.processes.start(name, _jokko_argv(name), child_env)
            self._wait_ready(http)
            c.print(
                f"started: API {self.api}, router, relay, fake CMU/CSS (HTTPS, mutual TLS) and "
                f"IPRES (files) — logs in {self.work / 'logs'}"
            )
            self._faults(http, "css", error_rate=CSS_ERROR_RATE)
            rejected_member = month.members[len(month.members) // 2]
            self._faults(http, "cmu", reject_members=[rejected_member])
            c.print(
                f"faults: CSS answers {CSS_ERROR_RATE:.0%} of requests 503; CMU rejects member "
                f"{rejected_member}; a poison record goes straight onto the canonical topic"
            )
            self._submit(http, month)
            self._poison(jokko.vault)
            self._wait_final(len(month.events))
            self.outcome.first = self._tally()
            self.outcome.dead_letters = self._dead_letters()
            self.outcome.css_requests = int(
                http.get(f"{self.control}/stats/css").json()["requests"]
            )
            self._print_tally(self.outcome.first, "Deliveries after the month (CSS flapping)")
            first = self._reconcile(http, month, 1)
            self._expect_first(rejected_member)
            c.print("CSS is healthy again; re-driving every missing record")
            self._faults(http, "css", error_rate=0.0)
            outcomes = http.post(
                f"{self.api}/v1/reconciliations/{first}/redrive",
                json={},
                headers=self._token(http, "operator-demo"),
            )
            outcomes.raise_for_status()
            self.outcome.redrive = Counter(outcomes.json()["outcomes"].values())
            c.print(f"re-drive: {dict(self.outcome.redrive)}")
            self._dead_letter_desk(http)
            self._wait_final(len(month.events))
            self.outcome.final = self._tally()
            self.outcome.dead_letters = self._dead_letters()
            self.outcome.css_requests = int(
                http.get(f"{self.control}/stats/css").json()["requests"]
            )
            self._print_tally(self.outcome.final, "Deliveries after the re-drive")
            self._reconcile(http, month, 2)
            self._expect_closed(rejected_member)
            self.outcome.console_url = f"{self.api}/console/"
            self._farewell()
            if not self.options.exit_at_end:
                _wait_for_ctrl_c(self.processes)
        return self.outcome

    def _submit(self, http: httpx.Client, month: Month) -> None:
        headers = self._token(http, "msnas-demo")
        invalid = dict(month.events[-1])
        invalid = {**invalid, "event_id": str(uuid.uuid4()), "payload": {"amount": 10.5}}
        refused = http.post(f"{self.api}/v1/events", json=invalid, headers=headers)
        fields = [f"{e['loc']}: {e['msg']}" for e in refused.json().get("errors", [])][:2]
        self.outcome.refused_by_api = 1 if refused.status_code == 422 else 0
        self.console.print(
            f"an invalid event is refused by the API: {refused.status_code} {'; '.join(fields)}"
        )
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, TimeElapsedColumn(), console=self.console) as bar:
            task = bar.add_task("submitting through the API", total=len(month.events))
            for start in range(0, len(month.events), BATCH):
                chunk = month.events[start : start + BATCH]
                key = str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo:{month.period}:{start}"))
                answer = http.post(
                    f"{self.api}/v1/events/batch",
                    json=chunk,
                    headers={**headers, "Idempotency-Key": key},
                )
                if answer.status_code != 202 or answer.json()["accepted"] != len(chunk):
                    raise DemoFailed(f"batch at {start} not accepted: {answer.text[:300]}")
                self.outcome.submitted += len(chunk)
                bar.advance(task, len(chunk))

    def _poison(self, vault: Vault) -> None:
        """Sealed like every record on the topic: it opens, and then does not parse."""
        event_id = str(uuid.uuid4())
        value, sealed = seal_canonical(
            vault,
            event_id,
            b'{"event_type": "member.enrolled", "payload": ',  # cut off mid-way
        )
        producer = idempotent_producer(self.settings.kafka_bootstrap, client_id="jokko-demo")
        try:
            producer.send(
                self.settings.canonical_topic,
                key=b"MSNAS-DK-999999",
                value=value,
                headers=[("event_id", event_id.encode()), sealed],
            ).get(timeout=30)
        finally:
            producer.close()

    def _dead_letter_desk(self, http: httpx.Client) -> None:
        """The operator's round of the open dead letters: deliveries are replayed (those the
        re-drive already put back answer ``already_redelivered``; the others, such as CSS
        maternity requests that no ledger line covers, go again), the poison record is
        discarded with a reason."""
        headers = self._token(http, "operator-demo")
        letters: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            page = http.get(f"{self.api}/v1/dead-letters", params=params, headers=headers)
            page.raise_for_status()
            letters += page.json()["items"]
            cursor = page.json().get("next_cursor")
            if not cursor:
                break
        for letter in letters:
            url = f"{self.api}/v1/dead-letters/{letter['id']}"
            if str(letter["source"]).startswith("delivery"):
                answer = http.post(f"{url}/replay", headers=headers)
                answer.raise_for_status()
                self.outcome.desk[f"replay: {answer.json()['outcome']}"] += 1
            else:
                reason = "truncated record from a broken agent app; the agent re-sends it"
                http.post(
                    f"{url}/discard", json={"reason": reason}, headers=headers
                ).raise_for_status()
                self.outcome.desk["poison discarded"] += 1
        self.console.print(f"dead letters handled from the API: {dict(self.outcome.desk)}")

    def _wait_final(self, events: int) -> None:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        deadline = time.monotonic() + self.options.timeout_s
        with Progress(*columns, TimeElapsedColumn(), console=self.console) as bar:
            routing = bar.add_task("routed (inbox)", total=events)
            delivering = bar.add_task("deliveries final", total=None)
            while True:
                self.processes.check()
                with Session(self.engine) as s:
                    routed = s.scalar(select(func.count()).select_from(InboxRow)) or 0
                    total = s.scalar(select(func.count()).select_from(OutboxRow)) or 0
                    final = (
                        s.scalar(
                            select(func.count())
                            .select_from(OutboxRow)
                            .where(OutboxRow.state.in_(FINAL))
                        )
                        or 0
                    )
                    poison = s.scalar(
                        select(func.count())
                        .select_from(DeadLetterRow)
                        .where(DeadLetterRow.source == "canonical")
                    )
                bar.update(routing, completed=routed)
                bar.update(delivering, completed=final, total=total)
                if routed >= events and poison and total and final == total:
                    return
                if time.monotonic() > deadline:
                    raise DemoFailed(
                        f"not done after {self.options.timeout_s:.0f} s: {routed}/{events} "
                        f"routed, {final}/{total} deliveries final"
                    )
                time.sleep(0.5)

    def _tally(self) -> Tally:
        tally = Tally()
        with Session(self.engine) as s:
            rows = s.execute(
                select(OutboxRow.institution, OutboxRow.state, func.count()).group_by(
                    OutboxRow.institution, OutboxRow.state
                )
            )
            for institution, state, n in rows:
                tally.states.setdefault(str(institution), Counter())[str(state)] += n
        return tally

    def _dead_letters(self) -> Counter[str]:
        with Session(self.engine) as s:
            rows = s.execute(
                select(DeadLetterRow.source, DeadLetterRow.reason, func.count())
                .where(DeadLetterRow.replayed_at.is_(None), DeadLetterRow.discarded_at.is_(None))
                .group_by(DeadLetterRow.source, DeadLetterRow.reason)
            )
            return Counter({f"{src}: {reason}": n for src, reason, n in rows})

    def _print_tally(self, tally: Tally, title: str) -> None:
        table = Table(title=title)
        for column in ("institution", "delivered", "accepted", "rejected", "dead"):
            table.add_column(column, justify="left" if column == "institution" else "right")
        for inst in INSTITUTIONS:
            table.add_row(
                inst.upper(),
                f"{tally.total(inst):,}",
                f"{tally.of(inst, DeliveryState.ACCEPTED):,}",
                f"{tally.of(inst, DeliveryState.REJECTED):,}",
                f"{tally.of(inst, DeliveryState.DEAD):,}",
            )
        self.console.print(table)
        letters = ", ".join(f"{k}: {v}" for k, v in self.outcome.dead_letters.items())
        self.console.print(
            f"open dead letters: {letters or 'none'}; "
            f"requests CSS received so far: {self.outcome.css_requests:,}"
        )
        with Session(self.engine) as s:
            pairs = s.execute(
                select(MemberDuplicateRow.member_id, MemberDuplicateRow.other_member_id)
                .where(MemberDuplicateRow.reviewed_at.is_(None))
                .order_by(MemberDuplicateRow.id)
            ).all()
        self.outcome.duplicates = len(pairs)
        shown = ", ".join(f"{m} = {o}" for m, o in pairs[:5]) + (", ..." if len(pairs) > 5 else "")
        self.console.print(
            f"duplicate enrolments flagged (same NIN under another member id): {len(pairs)}"
            + (f" ({shown})" if pairs else "")
        )

    def _reconcile(self, http: httpx.Client, month: Month, n: int) -> int:
        folder = self.work / "reconcile"
        (folder / f"ledger-{n}.csv").write_text(
            header_line() + "".join(ledger_line(r) for r in month.ledger),
            encoding="utf-8",
            newline="",
        )
        request: dict[str, str] = {"ledger": f"ledger-{n}.csv"}
        for inst in INSTITUTIONS:
            extract = http.get(f"{self.control}/extract/{inst}")
            extract.raise_for_status()
            name = f"{n}-{EXTRACT_NAMES[inst]}"
            (folder / name).write_text(extract.text, encoding="utf-8", newline="")
            request[inst] = name
        headers = self._token(http, "operator-demo")
        started = http.post(f"{self.api}/v1/reconciliations", json=request, headers=headers)
        started.raise_for_status()
        run_id = int(started.json()["id"])
        deadline = time.monotonic() + 120
        while (run := http.get(f"{self.api}/v1/reconciliations/{run_id}", headers=headers).json())[
            "state"
        ] not in ("done", "failed"):
            if time.monotonic() > deadline:
                raise DemoFailed(f"reconciliation {run_id} still {run['state']} after 120 s")
            time.sleep(0.3)
        if run["state"] == "failed":
            raise DemoFailed(f"reconciliation {run_id} failed: {run['error']}")
        report = http.get(
            f"{self.api}/v1/reconciliations/{run_id}/report",
            params={"format": "json"},
            headers=headers,
        ).json()
        found: Counter[tuple[str, str]] = Counter(
            (d["institution"], d["kind"]) for d in report["discrepancies"]
        )
        if n == 1:
            self.outcome.found = found
        else:
            self.outcome.after_redrive = found
        table = Table(
            title=f"Reconciliation run {run_id}: the mutual's ledger against the extracts"
        )
        kinds = ("missing", "extra", "mismatch", "duplicate", "duplicate_member")
        for column in ("institution", *kinds):
            table.add_column(column, justify="left" if column == "institution" else "right")
        for inst in INSTITUTIONS:
            table.add_row(inst.upper(), *(str(found[(inst, k)]) for k in kinds))
        self.console.print(table)
        self.console.print(f"report: {self.api}/v1/reconciliations/{run_id}/report?format=html")
        return run_id

    def _expect_first(self, rejected_member: str) -> None:
        """Missing at each institution = its dead deliveries' records + the rejected member's."""
        t, found = self.outcome.first, self.outcome.found
        if self.outcome.refused_by_api != 1:
            self.outcome.problems.append("the invalid event was not refused with 422")
        if not any(k.startswith("canonical") for k in self.outcome.dead_letters):
            self.outcome.problems.append("the poison record is not among the dead letters")
        if t.of("cmu", DeliveryState.REJECTED) == 0:
            self.outcome.problems.append(f"CMU rejected nothing of {rejected_member}")
        members = self.options.members
        twins = sum(1 for i in range(members) if i % DUPLICATE_EVERY == DUPLICATE_EVERY // 2)
        if self.outcome.duplicates != twins:
            self.outcome.problems.append(
                f"{self.outcome.duplicates} duplicate enrolments flagged, {twins} in the month"
            )
        for kind in ("extra", "mismatch", "duplicate"):
            if any(found[(i, kind)] for i in INSTITUTIONS):
                self.outcome.problems.append(f"first run reports {kind} records")
        if t.of("css", DeliveryState.DEAD) and not found[("css", "missing")]:
            self.outcome.problems.append("CSS has dead deliveries but nothing missing")
        if not found[("cmu", "missing")]:
            self.outcome.problems.append("the rejected CMU records are not reported missing")

    def _expect_closed(self, rejected_member: str) -> None:
        t, left = self.outcome.final, self.outcome.after_redrive
        for inst in INSTITUTIONS:
            if t.of(inst, DeliveryState.DEAD):
                self.outcome.problems.append(f"{inst}: deliveries still dead after the re-drive")
        if left[("css", "missing")] or left[("ipres", "missing")]:
            self.outcome.problems.append("records still missing at CSS or IPRES after re-drive")
        if any(left[(i, k)] for i in INSTITUTIONS for k in ("extra", "mismatch", "duplicate")):
            self.outcome.problems.append("the second run reports extra/mismatch/duplicate")
        rejected = self.outcome.first.of("cmu", DeliveryState.REJECTED)
        if left[("cmu", "missing")] > rejected:
            self.outcome.problems.append("CMU misses more than the records it rejected")
        self.console.print(
            f"left after the re-drive: {left[('cmu', 'missing')]} record(s) of {rejected_member} "
            "that CMU rejected (reason kept on the delivery): a rejection is the institution's "
            "decision, so the mutual corrects the record; a re-drive never overrides it"
        )

    def _farewell(self) -> None:
        verdict = (
            "[green]the month reached every institution exactly once and reconciles[/]"
            if self.outcome.ok
            else "[red]" + "; ".join(self.outcome.problems) + "[/]"
        )
        self.console.print(verdict)
        self.console.print(
            f"operator console: [bold]{self.outcome.console_url}[/] — client id "
            f"[bold]operator-demo[/], secret [bold]{self.credentials['operator-demo']}[/]"
        )


def _settings_of(env: dict[str, str]) -> dict[str, object]:
    """The same settings the child processes read, for the demo's own view of the store."""
    nested: dict[str, dict[str, str]] = {}
    flat: dict[str, object] = {}
    for name, value in env.items():
        key = name.removeprefix("JOKKO_").lower()
        if key in ("reconcile_dir",):
            continue
        if "__" in key:
            outer, inner = key.split("__", 1)
            nested.setdefault(outer, {})[inner] = value
        else:
            flat[key] = value
    return {**flat, **nested}


def _readline(stream: IO[bytes], timeout_s: float) -> str:
    line: list[bytes] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    return line[0].decode() if line else ""


def _wait_for_ctrl_c(processes: Processes) -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    Console().print("running until Ctrl-C")
    while not stop.wait(1.0):
        processes.check()


def run(settings: Settings, console: Console, options: Options) -> Outcome:
    return Demo(settings, console, options).run()
