"""A fake IPRES: declaration files in, acknowledgement files out (FORMAT.md), by file drop or
by HTTP.

File drop: Jokko writes each declaration file under a temporary name and renames it to
``*.dat`` in ``inbox``, so only complete files are seen. ``poll_once()`` (or the background
thread of ``start()``/``stop()``, or ``with fake:``) reads every ``*.dat`` with
``adapters.ipres.read_declaration_file``, moves it to ``inbox/processed/`` and writes the answer
into ``acks``, again through a temporary name then a rename:

* ``<stem>.ack`` (``build_ack_file``): one ``R`` line per record, accepted with an IPRES
  reference, or rejected ``R042`` (``Faults.reject_code``) for ``reject_members``;
* a file refused whole (wrong record count or control total, a malformed line, a repeated
  message id) is answered by an ack **rejecting every record** whose message id can be read,
  with ``R001`` and the reason as text (``Fichier refusé : total de contrôle erroné``): Jokko
  learns the fate of each message through the one channel it already reads. Only when no
  message id is readable at all (not UTF-8, no records) is ``<stem>.err`` written instead,
  plain text;
* with ``jwks`` (Jokko's message-keys JWKS), a file whose detached signature ``<file>.sig`` is
  missing, unreadable, by an unknown key or not of these exact bytes is not read at all:
  ``<stem>.err`` says why (``signature refused: bad_signature``), and ``refused_files`` counts it;
* with ``ack_key`` (the institution's own key), each ack file is signed detached: its
  ``<name>.ack.sig`` (``router.signing.sign_file``) is written before it, and ``receipt_fault``
  stages what Jokko must refuse or wait for: ``forge`` (signed with ``forge_key``), ``alter``
  (one byte added after signing), ``omit`` (no ``.sig``), ``late`` (the ``.sig`` written
  ``late_signature_s`` after the ack);
* ``duplicate_acks`` writes the same ack again as ``<stem>.dup.ack``; ``late_ack_s`` delays
  the writing (a later ``poll_once`` writes what has come due); ``down`` leaves the inbox
  untouched.

HTTP (``app``, when built with ``secret`` or ``jwks``): ``POST /ipres/v1/declarations`` with a
signed declaration file answers the ack file itself (200; 422 for a file refused whole; 400
text when nothing is readable), with the HTTP fault knobs of ``HttpFake``.

A message id accepted once is accepted again with the same IPRES reference (not ``R030``): the
fake applies a re-sent record once, as the real partner is expected to.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from types import TracebackType

from adapters.base import Ack, AckStatus, Institution
from adapters.ipres import (
    ControlTotalMismatch,
    DeclarationFileError,
    RecordCountMismatch,
    TrailerMismatch,
    build_ack_file,
    read_declaration_file,
)
from router.signing import SIG_SUFFIX, SignatureRejected, sign_file, verify_file
from tests.fakes.base import Answer, HttpFake, Jwks, ReceivedMessage
from tests.fakes.faults import Faults

MALFORMED = "R001"
REASON_TEXTS = {
    "R001": "Enregistrement mal formé",
    "R010": "Assuré inconnu de l'IPRES",
    "R020": "Affiliation déjà existante",
    "R030": "Message déjà traité",
    "R042": "Numéro d'identification inconnu",
    "R050": "Période close ou hors délai",
    "R060": "Annulation d'une cotisation inconnue ou déjà annulée",
    "R070": "Ayant droit inconnu",
    "R080": "Assuré décédé ou radié",
}
"""FORMAT.md's reason code table, worded as IPRES would."""
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FILE_ID = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,19}")


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    name: str
    file_id: str | None
    records: int
    refused: str | None
    """Why the whole file was refused, or None when it was read."""
    answers: tuple[str, ...]
    """Names of the files written (or to be written) into ``acks`` for it."""


@dataclass(frozen=True, slots=True)
class Verdict:
    ack: bytes | None
    error: str | None
    records: int
    file_id: str | None


def _lines(raw: bytes) -> list[str]:
    """Lines as the IPRES reader splits them: on LF, a CR before it dropped."""
    return [line.removesuffix("\r") for line in raw.decode("utf-8").split("\n")]


def _why_refused(exc: DeclarationFileError) -> str:
    if isinstance(exc, ControlTotalMismatch):
        return "Fichier refusé : total de contrôle erroné"
    if isinstance(exc, RecordCountMismatch):
        return "Fichier refusé : nombre d'enregistrements erroné"
    if isinstance(exc, TrailerMismatch):
        return "Fichier refusé : nombre et total de contrôle erronés"
    where = exc.errors[0].loc if exc.errors else "fichier"
    return f"Fichier refusé : mal formé ({where})"


def _readable_records(raw: bytes) -> tuple[str | None, list[tuple[str, str | None, bytes]]]:
    """The file id and the (message id, member id, line) of every line of a refused file whose
    message id can still be read, first occurrence only."""
    try:
        lines = _lines(raw)
    except UnicodeDecodeError:
        return None, []
    file_id = None
    if lines and lines[0][:1] == "H" and _FILE_ID.fullmatch(lines[0][23:43].rstrip(" ")):
        file_id = lines[0][23:43].rstrip(" ")
    out: list[tuple[str, str | None, bytes]] = []
    seen: set[str] = set()
    for line in lines:
        mid = line[1:37]
        if line[:1] in ("A", "B", "D") and _UUID.fullmatch(mid) and mid not in seen:
            seen.add(mid)
            member = line[39:62].rstrip(" ") or None
            out.append((mid, member, line.encode()))
    return file_id, out


class FakeIPRES(HttpFake):
    institution = Institution.IPRES
    path = "/ipres/v1/declarations"

    def __init__(
        self,
        inbox: Path,
        acks: Path,
        faults: Faults | None = None,
        *,
        secret: bytes | Sequence[bytes] | None = None,
        jwks: Jwks | None = None,
        poll_interval_s: float = 0.02,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if secret is None and jwks is None:
            secret = os.urandom(32)  # HTTP unused: nothing Jokko holds verifies
        super().__init__(secret, faults, jwks=jwks, clock=clock)
        self._jwks = jwks
        self.refused_files = 0
        """Declaration files not read because their detached signature failed."""
        self.inbox = inbox
        self.acks = acks
        self.processed = inbox / "processed"
        for d in (inbox, acks, self.processed):
            d.mkdir(parents=True, exist_ok=True)
        self.files: list[ReceivedFile] = []
        self.poll_interval_s = poll_interval_s
        self.late_signature_s = 1.0
        """With ``receipt_fault = "late"``: how long after its ack file the ``.sig`` comes."""
        self._pending: list[tuple[float, str, bytes]] = []  # (due, file name, content)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # --- judging a declaration file (both modes) ------------------------------------------------

    def judge(self, raw: bytes) -> Verdict:
        """Read a declaration file and answer it; records what was received."""
        today = date.today()
        try:
            declaration = read_declaration_file(raw)
        except DeclarationFileError as exc:
            why = _why_refused(exc)
            file_id, readable = _readable_records(raw)
            for mid, member, line in readable:
                self.recorder.record(
                    ReceivedMessage(mid, member, line, AckStatus.REJECTED, MALFORMED)
                )
            if not readable:
                return Verdict(None, f"{why}\n{exc}\n", 0, file_id)
            answers = [
                Ack(mid, Institution.IPRES, AckStatus.REJECTED, MALFORMED, why)
                for mid, _, _ in readable
            ]
            ack = build_ack_file(
                answers,
                file_id=f"IPRES-{self.recorder.next_seq():06d}",
                declaration_file_id=file_id or "INCONNU",
                created=today,
            )
            return Verdict(ack, why, len(readable), file_id)
        lines = _lines(raw)
        answers = []
        for record in declaration.records:
            line = lines[record.line - 1].encode()
            prior = self.recorder.accepted_before(record.message_id)
            if prior is not None:
                first = prior[0]
                self.recorder.record(replace(first, body=line, resent=True))
                answers.append(
                    Ack(
                        record.message_id,
                        Institution.IPRES,
                        AckStatus.ACCEPTED,
                        institution_ref=first.institution_ref,
                    )
                )
            elif self.faults.rejects(record.member_id):
                code = self.reject_code()
                text = REASON_TEXTS.get(code, "Refusé par l'IPRES")
                self.recorder.record(
                    ReceivedMessage(
                        record.message_id, record.member_id, line, AckStatus.REJECTED, code
                    )
                )
                answers.append(
                    Ack(record.message_id, Institution.IPRES, AckStatus.REJECTED, code, text)
                )
            else:
                ref = f"IPR-{self.recorder.next_seq():08d}"
                self.recorder.record(
                    ReceivedMessage(
                        record.message_id,
                        record.member_id,
                        line,
                        AckStatus.ACCEPTED,
                        institution_ref=ref,
                    )
                )
                answers.append(
                    Ack(
                        record.message_id,
                        Institution.IPRES,
                        AckStatus.ACCEPTED,
                        institution_ref=ref,
                    )
                )
        ack = build_ack_file(
            answers,
            file_id=f"IPRES-{self.recorder.next_seq():06d}",
            declaration_file_id=declaration.file_id,
            created=today,
        )
        return Verdict(ack, None, len(answers), declaration.file_id)

    # --- HTTP mode ------------------------------------------------------------------------------

    def unauthorized(self, error: SignatureRejected) -> Answer:
        return Answer(401, "text/plain", f"signature refused: {error.reason}".encode())

    def _process(self, message_id: str, body: bytes, content_type: str) -> Answer:
        verdict = self.judge(body)
        self._note_file(f"http:{message_id}", verdict, ())
        if verdict.ack is None:
            return Answer(400, "text/plain", (verdict.error or "").encode())
        return Answer(422 if verdict.error else 200, "text/plain", verdict.ack)

    # --- file mode ------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Read every complete declaration file in the inbox, then write the acks that are due.
        Returns the number of declaration files read."""
        taken = 0
        if not self.faults.down:
            for path in sorted(self.inbox.glob("*.dat")):
                self._take(path)
                taken += 1
        self._write_due()
        return taken

    def pending_acks(self) -> int:
        """Acks decided but not yet written (``late_ack_s``)."""
        with self._lock:
            return len(self._pending)

    def _signature_refused(self, path: Path, raw: bytes) -> str | None:
        """Why the file's detached signature does not hold, None when it does (or when this
        fake checks none)."""
        if self._jwks is None:
            return None
        document = self._jwks() if callable(self._jwks) else self._jwks
        try:
            verify_file(document, raw, path.with_name(path.name + SIG_SUFFIX).read_bytes())
        except OSError:
            return "signature refused: missing_signature"
        except SignatureRejected as exc:
            return f"signature refused: {exc.reason}"
        return None

    def _take(self, path: Path) -> None:
        raw = path.read_bytes()
        refused = self._signature_refused(path, raw)
        target = self.processed / path.name
        n = 0
        while target.exists():
            n += 1
            target = self.processed / f"{path.name}.{n}"
        signature = path.with_name(path.name + SIG_SUFFIX)
        if signature.exists():
            os.replace(signature, target.with_name(target.name + SIG_SUFFIX))
        os.replace(path, target)
        if refused is not None:
            with self._lock:
                self.refused_files += 1
                self._pending.append((time.monotonic(), f"{path.stem}.err", refused.encode()))
            self._note_file(path.name, Verdict(None, refused, 0, None), (f"{path.stem}.err",))
            return
        verdict = self.judge(raw)
        if verdict.ack is not None:
            outputs = [(f"{path.stem}.ack", verdict.ack)]
            if self.faults.duplicate_acks:
                outputs.append((f"{path.stem}.dup.ack", verdict.ack))
        else:
            outputs = [(f"{path.stem}.err", (verdict.error or "").encode())]
        due = time.monotonic() + self.faults.late_ack_s
        with self._lock:
            for name, content in outputs:
                self._pending += self._with_signature(due, name, content)
        self._note_file(path.name, verdict, tuple(name for name, _ in outputs))

    def _with_signature(
        self, due: float, name: str, content: bytes
    ) -> list[tuple[float, str, bytes]]:
        """An ack file and its detached signature (first, unless ``late``), as IPRES would
        write them when it signs its acks (``ack_key``); ``.err`` files are not signed."""
        key = self.forge_key if self.receipt_fault == "forge" else self.ack_key
        if key is None or not name.endswith(".ack") or self.receipt_fault == "omit":
            return [(due, name, content)]
        signature = (f"{name}{SIG_SUFFIX}", sign_file(key, content))
        if self.receipt_fault == "alter":
            content += b"\n"  # one byte more than was signed
        if self.receipt_fault == "late":
            return [(due, name, content), (due + self.late_signature_s, *signature)]
        return [(due, *signature), (due, name, content)]

    def _note_file(self, name: str, verdict: Verdict, answers: tuple[str, ...]) -> None:
        with self._lock:
            self.files.append(
                ReceivedFile(name, verdict.file_id, verdict.records, verdict.error, answers)
            )

    def _write_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [p for p in self._pending if p[0] <= now]
            self._pending = [p for p in self._pending if p[0] > now]
        for _, name, content in due:
            tmp = self.acks / f".{name}.tmp"
            tmp.write_bytes(content)
            os.replace(tmp, self.acks / name)

    # --- background thread ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fake-ipres", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (pending late acks stay pending); re-raises what broke the thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(10)
        self._thread = None
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError("the fake IPRES poller failed") from failure

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # surfaced by stop(), not lost in a thread
                self._failure = exc
                return
            self._stop.wait(self.poll_interval_s)

    def __enter__(self) -> FakeIPRES:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def extract(self) -> str:
        """IPRES's statement file of the lines it accepted, out of the files it accepted."""
        from tests.fakes import holdings

        return holdings.ipres_extract(holdings.accepted_bodies(self.received))
