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

The Kafka broker is the caller's (``scripts/demo.sh`` starts a throw-away one). This module
plays the flow; ``services.demo_processes`` starts and wires the processes, ``services.demo_report``
tallies, prints and judges what the demo observed, ``services.demo_data`` makes the month.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters.msnas.ledger import header_line, ledger_line
from router.broker import idempotent_producer
from router.broker import wait_until_ready as wait_for_broker
from router.envelope import seal_canonical
from router.store import DeadLetterRow, DeliveryState, InboxRow, OutboxRow
from router.vault import Vault
from services.api.auth import Authority, Scope
from services.bootstrap import bootstrap
from services.demo_data import Month, generate_month, previous_period
from services.demo_processes import (
    DemoFailed,
    Processes,
    environment,
    jokko_argv,
    settings_of,
    start_partners,
    wait_for_ctrl_c,
)
from services.demo_report import (
    Outcome,
    count_deliveries,
    expect_closed,
    expect_first,
    farewell,
    open_dead_letters,
    print_reconciliation,
    print_tally,
)
from services.reconcile import INSTITUTIONS
from services.reconcile_runs import EXTRACT_NAMES
from services.settings import Settings, load_settings

FINAL = (DeliveryState.ACCEPTED, DeliveryState.REJECTED, DeliveryState.DEAD)
BATCH = 250
CSS_ERROR_RATE = 0.3


@dataclass
class Options:
    members: int = 2000
    workdir: Path = Path(".jokko/demo")
    exit_at_end: bool = False
    timeout_s: float = 600.0
    seed: int = 2026


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
            partners, self.api, css_secret = start_partners(self.processes, self.work)
            self.control = partners["control"]
            env = environment(self.settings, self.work, self.api, css_secret, partners)
            jokko = bootstrap(load_settings(**settings_of(env)))
            self.engine = jokko.engine
            self._clients(Authority(jokko.engine, vault=jokko.vault))
            child_env = {**os.environ, **env}
            for name in ("router", "relay", "api"):
                self.processes.start(name, jokko_argv(name), child_env)
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
            self.outcome.first = count_deliveries(self.engine)
            self.outcome.dead_letters = open_dead_letters(self.engine)
            self.outcome.css_requests = int(
                http.get(f"{self.control}/stats/css").json()["requests"]
            )
            print_tally(
                c,
                self.engine,
                self.outcome,
                self.outcome.first,
                "Deliveries after the month (CSS flapping)",
            )
            first = self._reconcile(http, month, 1)
            expect_first(self.outcome, self.options.members, rejected_member)
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
            self.outcome.final = count_deliveries(self.engine)
            self.outcome.dead_letters = open_dead_letters(self.engine)
            self.outcome.css_requests = int(
                http.get(f"{self.control}/stats/css").json()["requests"]
            )
            print_tally(
                c, self.engine, self.outcome, self.outcome.final, "Deliveries after the re-drive"
            )
            self._reconcile(http, month, 2)
            expect_closed(c, self.outcome, rejected_member)
            self.outcome.console_url = f"{self.api}/console/"
            farewell(c, self.outcome, self.credentials["operator-demo"])
            if not self.options.exit_at_end:
                wait_for_ctrl_c(self.processes)
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
        print_reconciliation(self.console, self.api, run_id, found)
        return run_id


def run(settings: Settings, console: Console, options: Options) -> Outcome:
    return Demo(settings, console, options).run()
