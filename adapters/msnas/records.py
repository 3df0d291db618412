"""MSNAS records v1 (as the agents' app writes them) mapped to canonical events.

One mapper per record ``type``. A mapper reads every field it knows through a ``_View``, which
converts the value, puts it at its canonical path and remembers canonical path -> MSNAS field,
so an ``InvalidEvent`` raised by ``schemas.parse_event`` is reported under the field name the
operator knows. Fields a mapper never reads are reported as unknown.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from adapters.msnas import values as v
from schemas import SCHEMA_VERSION, CanonicalEvent, InvalidEvent, parse_event

SOURCE = "MSNAS"
FORMAT_VERSION = 1

EVENT_NAMESPACE = UUID("0f6d3b2a-5c1e-4b7f-8a94-3e2d1c0b9a87")
"""Namespace of the MSNAS event ids: ``uuid5(EVENT_NAMESPACE, "MSNAS:<id_fiche>")``."""


def event_id_of(id_fiche: str) -> str:
    """The event id of an MSNAS record: the same record always gives the same id."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{SOURCE}:{id_fiche}"))


@dataclass(frozen=True, slots=True)
class Problem:
    """An error in one record, before it is placed in its row."""

    field: str
    message: str
    type: str


@dataclass
class _Context:
    out: dict[str, Any] = field(default_factory=dict)
    locs: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def put(self, path: str, value: Any) -> None:
        node = self.out
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    def problem(self, name: str, message: str, error_type: str) -> None:
        self.problems.append(Problem(name, message, error_type))


_ABSENT = object()


class _View:
    """The fields of one record (or of one nested object of it, e.g. an ``ayants_droit`` item)."""

    def __init__(self, ctx: _Context, record: Mapping[str, Any], prefix: str = "") -> None:
        self.ctx = ctx
        self.record = record
        self.prefix = prefix
        self.read: set[str] = set()

    def name(self, field_name: str) -> str:
        return self.prefix + field_name

    def get(self, field_name: str, convert: v.Converter = v.text) -> Any:
        """The converted value, or ``None`` when absent, empty or unconvertible (reported)."""
        self.read.add(field_name)
        raw = self.record.get(field_name)
        if raw is None or (isinstance(raw, str) and raw.strip() == ""):
            return None
        try:
            return convert(raw)
        except v.BadValue as bad:
            self.ctx.problem(self.name(field_name), bad.message, bad.type)
            return _ABSENT

    def take(self, field_name: str, *paths: str, convert: v.Converter = v.text) -> Any:
        """Read a field and put it at each canonical path (one field may feed several)."""
        for path in paths:
            self.ctx.locs[path] = self.name(field_name)
        value = self.get(field_name, convert)
        if value is not None and value is not _ABSENT:
            for path in paths:
                self.ctx.put(path, value)
            return value
        return None

    def items(self, field_name: str) -> list[tuple[int, Mapping[str, Any]]]:
        """The objects of a list field, each with its index; bad items are reported."""
        raw = self.get(field_name, v.listing)
        if raw is None or raw is _ABSENT:
            return []
        good = []
        for i, item in enumerate(raw):
            if isinstance(item, Mapping):
                good.append((i, item))
            else:
                self.ctx.problem(f"{self.name(field_name)}[{i}]", "must be an object", "dict_type")
        return good

    def finish(self) -> None:
        for unknown in sorted(str(k) for k in self.record if k not in self.read):
            self.ctx.problem(
                self.name(unknown[:64]), "is not a field of this record", "unknown_field"
            )


# --- pieces shared by several record types -----------------------------------------------------


def _envelope(r: _View, event_type: str, business_date: str, *, member: str | None) -> None:
    r.ctx.put("event_type", event_type)
    # The mutual's record format is mapped onto this canonical version, said explicitly: the
    # envelope no longer defaults it.
    r.ctx.put("schema_version", SCHEMA_VERSION)
    r.ctx.put("source.mutual", SOURCE)
    r.read.add("type")
    event_id = r.take("id_fiche", "event_id", convert=lambda x: event_id_of(v.identifier(x)))
    if event_id is not None:
        r.ctx.put("correlation_id", event_id)
    r.take("agent", "source.agent_id")
    r.take("antenne", "source.region", convert=v.region)
    r.take("saisi_le", "recorded_at", convert=v.moment)
    r.take(business_date, "occurred_at", convert=v.moment)
    if member is not None:
        r.take(member, "member_id")


def _identity(r: _View, base: str, *, phone: bool) -> None:
    r.take("prenom", f"{base}.given_names")
    r.take("nom", f"{base}.family_name")
    r.take("sexe", f"{base}.sex", convert=v.sex)
    r.take("date_naissance", f"{base}.birth_date", convert=v.day)
    r.take("nin", f"{base}.nin")
    if phone:
        r.take("telephone", f"{base}.phone")


def _dependent(r: _View, base: str) -> None:
    r.take("numero_ayant_droit", f"{base}.dependent_id")
    r.take("lien", f"{base}.relationship", convert=v.relationship)
    _identity(r, f"{base}.identity", phone=False)


def _branches(values: list[Any]) -> list[str]:
    return [v.branch(b) for b in values]


def _allocation(r: _View, base: str) -> None:
    r.ctx.locs[base] = r.name("repartition")
    raw = r.get("repartition", _mapping)
    if raw is None or raw is _ABSENT:
        return
    shares: dict[str, int] = {}
    for label, share in raw.items():
        where = f"{r.name('repartition')}.{str(label)[:32]}"
        try:
            code = v.branch(label)
            shares[code] = v.amount(share)
        except v.BadValue as bad:
            r.ctx.problem(where, bad.message, bad.type)
            continue
        r.ctx.locs[f"{base}.{code}"] = where
    r.ctx.put(base, shares)


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise v.BadValue("dict_type", "must be an object of branch: amount")
    return value


def _list_of(convert: v.Converter) -> v.Converter:
    return lambda value: [convert(item) for item in v.listing(value)]


# --- one mapper per record type ----------------------------------------------------------------


def _adhesion(r: _View) -> None:
    _envelope(r, "member.enrolled", "date_adhesion", member="numero_adherent")
    _identity(r, "payload.identity", phone=True)
    r.take("region", "payload.region", convert=v.region)
    r.take("departement", "payload.departement")
    r.take("metier", "payload.trade")
    r.take("formule", "payload.package", convert=v.package)
    r.take("branches", "payload.opted_branches", convert=lambda x: _branches(v.listing(x)))
    dependents = r.items("ayants_droit")
    r.ctx.locs["payload.dependents"] = r.name("ayants_droit")
    if dependents or r.record.get("ayants_droit") == []:
        r.ctx.put("payload.dependents", [])
    for i, item in dependents:
        ctx = _Context()
        sub_view = _View(ctx, item, f"{r.name('ayants_droit')}[{i}].")
        _dependent(sub_view, "d")
        sub_view.finish()
        r.ctx.out["payload"]["dependents"].append(ctx.out.get("d", {}))
        r.ctx.problems.extend(ctx.problems)
        for path, name in ctx.locs.items():
            r.ctx.locs[f"payload.dependents.{i}" + path.removeprefix("d")] = name


def _modification(r: _View) -> None:
    _envelope(r, "member.updated", "date_modification", member="numero_adherent")
    r.ctx.locs["payload.changes"] = ""
    r.ctx.put("payload.changes", {})
    _identity(r, "payload.changes", phone=True)
    r.take("region", "payload.changes.region", convert=v.region)
    r.take("departement", "payload.changes.departement")
    r.take("metier", "payload.changes.trade")
    r.take("formule", "payload.changes.package", convert=v.package)
    r.take("branches", "payload.changes.opted_branches", convert=lambda x: _branches(v.listing(x)))


def _ayant_droit_ajout(r: _View) -> None:
    _envelope(r, "member.dependent_added", "date_ajout", member="numero_adherent")
    _dependent(r, "payload.dependent")


def _ayant_droit_retrait(r: _View) -> None:
    _envelope(r, "member.dependent_removed", "date_retrait", member="numero_adherent")
    r.take("numero_ayant_droit", "payload.dependent_id")
    r.take("motif", "payload.reason", convert=v.removal_reason)
    r.take("date_effet", "payload.effective_date", convert=v.day)


def _changement_statut(r: _View) -> None:
    _envelope(r, "member.status_changed", "date_decision", member="numero_adherent")
    r.take("statut", "payload.status", convert=v.member_status)
    r.take("date_effet", "payload.effective_date", convert=v.day)
    r.take("code_motif", "payload.reason_code")


def _cotisation(r: _View) -> None:
    _envelope(r, "contribution.paid", "date_paiement", member="numero_adherent")
    r.take("montant", "payload.amount", convert=v.amount)
    r.take("periode", "payload.period", convert=v.period)
    _allocation(r, "payload.allocation")
    r.take("canal", "payload.channel", convert=v.channel)
    r.take("reference_paiement", "payload.payment_reference")
    r.take("telephone_payeur", "payload.payer_phone")


def _annulation_cotisation(r: _View) -> None:
    _envelope(r, "contribution.reversed", "date_annulation", member="numero_adherent")
    r.take(
        "id_fiche_origine",
        "payload.original_event_id",
        "correlation_id",
        convert=lambda x: event_id_of(v.identifier(x)),
    )
    r.take("reference_paiement", "payload.payment_reference")
    r.take("periode", "payload.period", convert=v.period)
    r.take("montant", "payload.amount", convert=v.amount)
    _allocation(r, "payload.allocation")
    r.take("motif", "payload.reason", convert=v.reversal_reason)


def _facture(r: _View) -> None:
    _envelope(r, "claim.submitted", "date_facture", member="numero_adherent")
    r.take("numero_facture", "payload.claim_id")
    r.take("nature", "payload.kind", convert=v.claim_kind)
    beneficiary = r.take("beneficiaire", "payload.beneficiary_id")
    if beneficiary is None:
        # Care for the member themself: the app leaves "beneficiaire" out.
        r.ctx.locs["payload.beneficiary_id"] = r.name("numero_adherent")
        member = r.record.get("numero_adherent")
        if member is not None:
            r.ctx.put("payload.beneficiary_id", member)
    r.take("convention", "payload.provider_agreement")
    r.take("date_soins", "payload.service_date", convert=v.day)
    r.take("diagnostics", "payload.diagnoses", convert=v.listing)
    r.ctx.locs["payload.items"] = r.name("lignes")
    lines = r.items("lignes")
    if lines or r.record.get("lignes") == []:
        r.ctx.put("payload.items", [])
    for i, item in lines:
        ctx = _Context()
        sub = _View(ctx, item, f"{r.name('lignes')}[{i}].")
        sub.take("code", "l.code")
        sub.take("libelle", "l.description")
        sub.take("quantite", "l.quantity", convert=v.count)
        sub.take("prix_unitaire", "l.unit_price", convert=v.amount)
        sub.take("montant", "l.amount", convert=v.amount)
        sub.finish()
        r.ctx.out["payload"]["items"].append(ctx.out.get("l", {}))
        r.ctx.problems.extend(ctx.problems)
        for path, name in ctx.locs.items():
            r.ctx.locs[f"payload.items.{i}" + path.removeprefix("l")] = name
    r.take("montant_total", "payload.total", convert=v.amount)


def _decision_facture(r: _View) -> None:
    _envelope(r, "claim.adjudicated", "date_decision", member="numero_adherent")
    r.take("id_fiche_facture", "correlation_id", convert=lambda x: event_id_of(v.identifier(x)))
    r.take("numero_facture", "payload.claim_id")
    r.ctx.locs["payload.adjudicator"] = r.name("decideur")
    if r.take("decideur", "payload.adjudicator") is None:
        r.ctx.put("payload.adjudicator", SOURCE)
    r.take("decision", "payload.outcome", convert=v.claim_outcome)
    r.take("montant_reclame", "payload.claimed_amount", convert=v.amount)
    r.take("montant_accorde", "payload.approved_amount", convert=v.amount)
    r.take("motifs", "payload.reason_codes", convert=v.listing)


def _accident_travail(r: _View) -> None:
    _envelope(r, "work_accident.declared", "date_declaration", member="numero_adherent")
    r.take("numero_accident", "payload.accident_id")
    r.take("date_heure_accident", "payload.accident_at", convert=v.moment)
    r.take("region", "payload.region", convert=v.region)
    r.take("departement", "payload.departement")
    r.take("lieu", "payload.place")
    r.take("activite", "payload.activity")
    r.take("description", "payload.description")
    r.take("lesions", "payload.injuries")
    r.take("trajet", "payload.on_commute", convert=v.boolean)
    r.take("deces", "payload.fatal", convert=v.boolean)
    r.take("jours_arret", "payload.work_stoppage_days", convert=v.count)
    r.take("structure_premiers_soins", "payload.first_care_provider")
    r.ctx.locs["payload.witnesses"] = r.name("temoins")
    witnesses = r.items("temoins")
    if witnesses:
        r.ctx.put("payload.witnesses", [])
    for i, item in witnesses:
        ctx = _Context()
        sub = _View(ctx, item, f"{r.name('temoins')}[{i}].")
        sub.take("prenom", "w.given_names")
        sub.take("nom", "w.family_name")
        sub.take("telephone", "w.phone")
        sub.finish()
        r.ctx.out["payload"]["witnesses"].append(ctx.out.get("w", {}))
        r.ctx.problems.extend(ctx.problems)
        for path, name in ctx.locs.items():
            r.ctx.locs[f"payload.witnesses.{i}" + path.removeprefix("w")] = name


def _grossesse(r: _View) -> None:
    _envelope(r, "maternity.declared", "date_declaration", member="numero_adherent")
    r.take("numero_grossesse", "payload.pregnancy_id")
    beneficiary = r.take("beneficiaire", "payload.beneficiary_id")
    if beneficiary is None:
        r.ctx.locs["payload.beneficiary_id"] = r.name("numero_adherent")
        member = r.record.get("numero_adherent")
        if member is not None:
            r.ctx.put("payload.beneficiary_id", member)
    r.take("date_confirmation", "payload.pregnancy_confirmed_on", convert=v.day)
    r.take("date_prevue_accouchement", "payload.expected_delivery_date", convert=v.day)
    r.take("grossesse_multiple", "payload.multiple_pregnancy", convert=v.boolean)
    r.take("structure_suivi", "payload.prenatal_provider")
    r.take("indemnite_demandee", "payload.cash_benefit_requested", convert=v.boolean)
    r.take("debut_conge", "payload.leave_start", convert=v.day)


def _convention_prestataire(r: _View) -> None:
    _envelope(r, "provider.agreement_signed", "date_signature", member=None)
    r.take("numero_convention", "member_id", "payload.agreement_number")
    r.take("nom_structure", "payload.name")
    r.take("type_structure", "payload.provider_type", convert=v.provider_type)
    r.take("secteur", "payload.sector", convert=v.provider_sector)
    r.take("region", "payload.region", convert=v.region)
    r.take("departement", "payload.departement")
    r.take("ninea", "payload.ninea")
    r.take("telephone", "payload.phone")
    r.take("formules", "payload.packages", convert=_list_of(v.package))
    r.take("date_signature", "payload.signed_on", convert=v.day)
    r.take("debut_validite", "payload.valid_from", convert=v.day)
    r.take("fin_validite", "payload.valid_until", convert=v.day)


MAPPERS: dict[str, Callable[[_View], None]] = {
    "adhesion": _adhesion,
    "modification": _modification,
    "ayant_droit_ajout": _ayant_droit_ajout,
    "ayant_droit_retrait": _ayant_droit_retrait,
    "changement_statut": _changement_statut,
    "cotisation": _cotisation,
    "annulation_cotisation": _annulation_cotisation,
    "facture": _facture,
    "decision_facture": _decision_facture,
    "accident_travail": _accident_travail,
    "grossesse": _grossesse,
    "convention_prestataire": _convention_prestataire,
}
"""Record ``type`` -> its mapper; the keys are the record types of format v1."""

RECORD_TYPES = tuple(MAPPERS)


def _msnas_field(loc: str, locs: Mapping[str, str]) -> str:
    """The MSNAS field behind a canonical error location (longest known prefix), or ``""``."""
    if loc == "event_type":
        return "type"
    path = loc
    while True:
        if path in locs:
            return locs[path]
        if "." not in path:
            return ""
        path = path.rsplit(".", 1)[0]


def map_record(record: Any) -> tuple[CanonicalEvent | None, list[Problem]]:
    """One MSNAS record to one canonical event, or the problems that prevent it."""
    if not isinstance(record, Mapping):
        return None, [Problem("", "must be an object (a record)", "record_type")]
    kind = record.get("type")
    if not isinstance(kind, str) or v.key(kind).replace(" ", "_") not in MAPPERS:
        message = "is not a known record type; expected one of: " + ", ".join(RECORD_TYPES)
        missing = kind is None
        return None, [
            Problem(
                "type",
                "is required" if missing else message,
                "missing" if missing else "unknown_record_type",
            )
        ]
    ctx = _Context()
    view = _View(ctx, record)
    MAPPERS[v.key(kind).replace(" ", "_")](view)
    view.finish()
    problems = list(ctx.problems)
    try:
        event = parse_event(ctx.out)
    except InvalidEvent as invalid:
        # Fields the adapter already reported come back as "Field required": keep the first.
        reported = {p.field for p in problems}
        for error in invalid.errors:
            name = _msnas_field(error.loc, ctx.locs)
            if name not in reported or name == "":
                problems.append(Problem(name, error.message, error.type))
                reported.add(name)
        return None, problems
    if problems:
        return None, problems
    return event, []
