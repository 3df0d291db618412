"""What a fake institution holds, rebuilt from the messages it accepted, and the reconciliation
extract it would return (CMU FHIR NDJSON, CSS CSV statement, IPRES statement file).

Pure: accepted bodies in (the wire formats the adapters produce), ``Rec``s and extract text
out, so a test reconciles what an institution *actually received* instead of an extract written
by hand. Messages are applied in arrival order, the way the institution would:

* an enrolment creates the affiliation; updates, status changes and dependent changes modify
  one that exists (a change to an affiliation the institution never received changes nothing:
  the real partner answers R010 and holds no identity to attach it to);
* a contribution adds its share to its member-month-branch; a reversal takes its own amounts
  off, only if the original it names is held (CSS R032, IPRES R060 otherwise) and only once;
  a statement lists positive net amounts;
* CMU: a claim is created by its id (conditional create); a decision sets its status to the
  outcome its amounts say (approved / partially_approved / rejected, as ``parse_ack`` reads
  them), since FHIR ``Claim.status`` has no code for one. Decisions are the mutual's
  ClaimResponses CMU received and CMU's own, found in its answers (``FakeCMU``'s
  ``adjudicate_claims``): routing never sends CMU its own decisions;
* a message id seen twice is applied once (every body carries its id), and CMU's conditional
  creates are no-ops when the identifier exists, as a FHIR server does.

What the holdings cover follows ``services.reconcile.expected_records``: CMU package, status and
active dependents; CSS status and, in the family branch, dependents; IPRES status only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from adapters.base import AckStatus
from adapters.cmu import extract as cmu_x
from adapters.cmu import systems as s
from adapters.cmu.mapping import PLAN_CLASS
from adapters.css import NAMESPACE
from adapters.css import extract as css_x
from adapters.extract import Rec, RecordKind
from adapters.ipres import extract as ipres_x
from tests.fakes.base import ReceivedMessage, Recorder

Json = dict[str, Any]
AFF, CON, CLM = RecordKind.AFFILIATION, RecordKind.CONTRIBUTION, RecordKind.CLAIM
NO_MONTH = "0000-00"
"""Header months of an IPRES statement that holds no contribution."""


def accepted_bodies(received: Iterable[ReceivedMessage]) -> list[bytes]:
    """The bodies an institution accepted, in arrival order (re-sends included: holdings
    apply a message id once). For IPRES, the accepted lines of the files it read."""
    return [m.body for m in received if m.status is AckStatus.ACCEPTED]


def recorded_cmu_extract(recorder: Recorder) -> str:
    """``FakeCMU.extract``: what it accepted, with the decisions it gave in its answers."""
    bodies = accepted_bodies(recorder.received)
    answers = {}
    for mid in recorder.accepted_ids():
        prior = recorder.accepted_before(mid)
        if prior is not None and prior[1] is not None:
            answers[mid] = prior[1].body
    return cmu_extract(bodies, answers)


@dataclass
class _Member:
    status: str = "active"
    package: str = ""
    branches: tuple[str, ...] = ()
    dependents: set[str] = field(default_factory=set)


@dataclass
class _Money:
    """Net amounts per (member, period, branch), and what each held payment contributed."""

    net: dict[tuple[str, str, str], int] = field(default_factory=dict)
    paid: dict[str, list[tuple[tuple[str, str, str], int]]] = field(default_factory=dict)
    reversed: set[str] = field(default_factory=set)

    def pay(self, ref: str, shares: list[tuple[tuple[str, str, str], int]]) -> None:
        self.paid[ref] = shares
        for key, amount in shares:
            self.net[key] = self.net.get(key, 0) + amount

    def reverse(self, original: str, shares: list[tuple[tuple[str, str, str], int]]) -> None:
        """Cancel ``shares`` (the reversal's own amounts) of a held, not yet reversed payment."""
        if original not in self.paid or original in self.reversed:
            return
        self.reversed.add(original)
        for key, amount in shares:
            self.net[key] = self.net.get(key, 0) - amount

    def recs(self, institution: str) -> list[Rec]:
        return [
            Rec(m, institution, CON, period, branch, "", amount)
            for (m, period, branch), amount in self.net.items()
            if amount > 0
        ]


# --- CMU: FHIR R4B transaction Bundles -------------------------------------------------------


def _ident(ref: Json) -> str:
    """The value of a resource's first identifier, or of a logical reference's."""
    ident = ref["identifier"]
    return str((ident[0] if isinstance(ident, list) else ident)["value"])


def _ext(resource: Json, url: str) -> Any:
    return next((e for e in resource.get("extension", ()) if e.get("url") == url), {})


def _operations(parameters: Json) -> list[tuple[str, Any]]:
    """(path, value) of each FHIRPath Patch operation; ``add`` paths get the element name."""
    out = []
    for op in parameters.get("parameter", ()):
        parts = {p["name"]: p for p in op["part"]}
        path = parts["path"]["valueString"]
        if "name" in parts:
            path += "." + parts["name"]["valueString"]
        value = next(v for k, v in parts["value"].items() if k.startswith("value"))
        out.append((path, value))
    return out


_PLAN = f"{PLAN_CLASS}.value"
_MEMBER_STATUS = f"Coverage.extension.where(url='{s.EXT_MEMBER_STATUS}').value"


@dataclass
class _Cmu:
    coverages: dict[str, _Member] = field(default_factory=dict)
    related: dict[str, tuple[str, bool]] = field(default_factory=dict)
    """dependent id -> (member id, active)."""
    claims: dict[str, list[Any]] = field(default_factory=dict)
    """claim id -> [member, month, total, status]."""
    money: _Money = field(default_factory=_Money)
    created: set[str] = field(default_factory=set)
    """``<type>|<system>|<value>`` of every conditional create applied."""

    def create(self, res: Json) -> None:
        rtype = res["resourceType"]
        if rtype == "Coverage":
            plan = res["class"][0]["value"]
            status = _ext(res, s.EXT_MEMBER_STATUS).get("valueCode", res["status"])
            self.coverages[_ident(res)] = _Member(status, plan)
        elif rtype == "RelatedPerson":
            self.related[_ident(res)] = (_ident(res["patient"]), bool(res.get("active", True)))
        elif rtype == "PaymentNotice":
            member = _ident(res["request"])
            period = _ext(res, s.EXT_CONTRIBUTION_PERIOD)["valuePeriod"]["start"][:7]
            shares = [((member, period, "health"), int(res["amount"]["value"]))]
            if res["paymentStatus"]["coding"][0]["code"] == "reversed":
                original = _ext(res, s.EXT_REVERSAL_OF)["valueIdentifier"]["value"]
                self.money.reverse(original, shares)
            else:
                self.money.pay(_ident(res), shares)
        elif rtype == "Claim":
            member = _ident(res["insurance"][0]["coverage"])
            month = res["billablePeriod"]["start"][:7]
            self.claims[_ident(res)] = [member, month, res["total"]["value"], res["status"]]
        elif rtype == "ClaimResponse":
            self.decide(res)
        # Patient, Organization, EpisodeOfCare: identity and care, not reconciled in v1

    def decide(self, response: Json) -> None:
        claim = self.claims.get(_ident(response["request"]))
        if claim is None:
            return  # a decision on a claim CMU does not hold
        amounts = {
            t["category"]["coding"][0]["code"]: t["amount"]["value"] for t in response["total"]
        }
        benefit, submitted = amounts["benefit"], amounts["submitted"]
        claim[3] = (
            "approved"
            if benefit == submitted
            else "rejected"
            if benefit == 0
            else "partially_approved"
        )

    def answered(self, answer: Json) -> None:
        """CMU's own decisions in its answer: a batch-response whose entries hold them."""
        if answer.get("type") == "batch-response":
            for entry in answer.get("entry", ()):
                if entry.get("resource", {}).get("resourceType") == "ClaimResponse":
                    self.decide(entry["resource"])

    def patch(self, rtype: str, value: str, ops: list[tuple[str, Any]]) -> None:
        if rtype == "Coverage" and value in self.coverages:
            cov = self.coverages[value]
            for path, new in ops:
                if path == _PLAN:
                    cov.package = new
                elif path == _MEMBER_STATUS:
                    cov.status = new
        elif rtype == "RelatedPerson" and value in self.related:
            for path, new in ops:
                if path == "RelatedPerson.active":
                    self.related[value] = (self.related[value][0], bool(new))

    def apply(self, bundle: Json) -> None:
        for entry in bundle.get("entry", ()):
            request, res = entry["request"], entry["resource"]
            if request["method"] == "POST":
                key = f"{res['resourceType']}|{request['ifNoneExist'].removeprefix('identifier=')}"
                if key not in self.created:
                    self.created.add(key)
                    self.create(res)
            elif request["method"] == "PATCH":
                rtype, _, query = request["url"].partition("?identifier=")
                self.patch(rtype, query.split("|", 1)[1], _operations(res))
            elif res["resourceType"] == "ClaimResponse":  # PUT: the mutual's latest decision
                self.decide(res)
            # other PUTs: providers (Organization), not reconciled

    def recs(self) -> list[Rec]:
        active: dict[str, int] = {}
        for member, is_active in self.related.values():
            active[member] = active.get(member, 0) + is_active
        out = [
            Rec(m, "cmu", AFF, "", "", "", 0, c.package, c.status, active.get(m, 0))
            for m, c in self.coverages.items()
        ]
        out += self.money.recs("cmu")
        out += [
            Rec(m, "cmu", CLM, month, "", claim_id, total, "", status)
            for claim_id, (m, month, total, status) in self.claims.items()
        ]
        return sorted(out)


def cmu_holdings(bodies: Iterable[bytes], answers: Mapping[str, bytes] | None = None) -> list[Rec]:
    """What CMU holds after applying these transaction Bundles in order (key order); claims
    keep their service month in ``period``, as CMU's extract reads them. ``answers``: CMU's
    answer to a message id, whose own decisions apply right after that message."""
    state, seen = _Cmu(), set[str]()
    for body in bodies:
        bundle = json.loads(body)
        mid = bundle["identifier"]["value"]
        if mid not in seen:
            seen.add(mid)
            state.apply(bundle)
            if answers and mid in answers:
                state.answered(json.loads(answers[mid]))
    return state.recs()


def cmu_extract(bodies: Iterable[bytes], answers: Mapping[str, bytes] | None = None) -> str:
    """CMU's NDJSON export of what it holds (adapters/cmu/FORMAT.md §5)."""
    return "".join(cmu_x.extract_line(r) + "\n" for r in cmu_holdings(bodies, answers))


# --- CSS: urn:sn:css:jokko:v1 XML documents --------------------------------------------------

_NS = "{" + NAMESPACE + "}"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
_CSS_SHARES = {"Family": "family", "WorkAccident": "work_accident"}


def _branches(root: etree._Element) -> tuple[str, ...]:
    return tuple(str(b.text) for b in root.iterfind(f"{_NS}Branches/{_NS}Branch"))


@dataclass
class _Css:
    affiliates: dict[str, _Member] = field(default_factory=dict)
    money: _Money = field(default_factory=_Money)

    def apply(self, root: etree._Element) -> None:
        member, kind = str(root.get("memberId")), etree.QName(root).localname
        if kind == "Affiliation":
            if member not in self.affiliates:  # R011: already affiliated
                deps = {str(d.get("dependentId")) for d in root.iter(f"{_NS}Dependent")}
                self.affiliates[member] = _Member(branches=_branches(root), dependents=deps)
        elif kind == "AffiliationChange":
            aff = self.affiliates.get(member)
            if aff is None:
                return  # R010: no affiliation to change
            aff.branches = _branches(root)
            for node in root:
                name = etree.QName(node).localname
                if name == "DependentAdded":
                    aff.dependents.add(str(node.get("dependentId")))
                elif name == "DependentRemoved":
                    aff.dependents.discard(str(node.get("dependentId")))
                elif name == "StatusChange":
                    aff.status = str(node.get("status"))
        elif kind == "ContributionDeclaration":
            period = str(root.findtext(f"{_NS}Period"))
            shares = [
                ((member, period, _CSS_SHARES[etree.QName(n).localname]), int(str(n.text)))
                for n in root.iterfind(f"{_NS}Shares/*")
            ]
            original = root.find(f"{_NS}Reverses")
            if original is not None:
                self.money.reverse(str(original.get("messageId")), shares)
            else:
                self.money.pay(str(root.get("messageId")), shares)
        # WorkAccidentDeclaration, MaternityBenefitRequest: files CSS opens, not in the statement

    def recs(self) -> list[Rec]:
        out = []
        for m, a in self.affiliates.items():
            if a.branches:  # a member out of both CSS branches is no longer an affiliate
                deps = len(a.dependents) if "family" in a.branches else -1
                out.append(Rec(m, "css", AFF, "", "", "", 0, "", a.status, deps))
        return sorted(out + self.money.recs("css"))


def css_holdings(bodies: Iterable[bytes]) -> list[Rec]:
    """What CSS holds after applying these documents in order (key order)."""
    state, seen = _Css(), set[str | None]()
    for body in bodies:
        root = etree.fromstring(body, parser=_PARSER)
        mid = root.get("messageId")
        if mid not in seen:
            seen.add(mid)
            state.apply(root)
    return state.recs()


def css_extract(bodies: Iterable[bytes]) -> str:
    """CSS's CSV statement of what it holds (adapters/css/FORMAT.md, "Statement")."""
    return css_x.header_line() + "".join(css_x.extract_line(r) for r in css_holdings(bodies))


# --- IPRES: declaration record lines ---------------------------------------------------------


@dataclass
class _Ipres:
    affiliates: dict[str, _Member] = field(default_factory=dict)
    money: _Money = field(default_factory=_Money)

    def apply(self, line: str) -> None:
        kind, mid, movement, member = line[0], line[1:37], line[37:39], line[39:62].rstrip()
        if kind == "A":
            if movement == "AF":
                self.affiliates.setdefault(member, _Member())  # R020 for a second AF
            elif movement == "ST" and member in self.affiliates:
                self.affiliates[member].status = ipres_x.STATUS[line[267]]
            # MO: identity and package changes; IPRES holds no package. For an unknown member
            # (opted into old age by an update) it is R010: nothing to hold.
        elif kind == "D":
            shares = [((member, f"{line[75:79]}-{line[79:81]}", "old_age"), int(line[82:92]))]
            if movement == "AN":
                self.money.reverse(line[166:202], shares)
            else:
                self.money.pay(mid, shares)
        # B: beneficiaries, which IPRES's statement does not list

    def recs(self) -> list[Rec]:
        out = [
            Rec(m, "ipres", AFF, "", "", "", 0, "", a.status) for m, a in self.affiliates.items()
        ]
        return sorted(out + self.money.recs("ipres"))


def ipres_holdings(lines: Iterable[bytes]) -> list[Rec]:
    """What IPRES holds after applying these record lines (A, B, D; the lines it accepted out
    of the declaration files it accepted) in order (key order)."""
    state, seen = _Ipres(), set[str]()
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line[1:37] not in seen:
            seen.add(line[1:37])
            state.apply(line)
    return state.recs()


def ipres_extract(lines: Iterable[bytes]) -> str:
    """IPRES's statement file of what it holds (adapters/ipres/FORMAT.md, "Statement file"),
    covering the months of the contributions it holds."""
    recs = ipres_holdings(lines)
    months = sorted(r.period for r in recs if r.kind == CON) or [NO_MONTH]
    total = sum(r.amount for r in recs)
    return (
        ipres_x.header_line(months[0], months[-1])
        + "".join(ipres_x.extract_line(r) for r in recs)
        + ipres_x.trailer_line(len(recs), total)
    )
