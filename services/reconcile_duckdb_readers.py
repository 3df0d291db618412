"""How DuckDB reads each export (the MSNAS ledger, the CMU, CSS and IPRES extracts) into the
records table of ``services.reconcile_duckdb``, exactly as the Python parsers read it, or not at
all: a row SQL cannot provably read the same way is marked (side 9) or the file refused with
``NotCanonical``, and the caller runs the Python engine instead."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from adapters.cmu import systems as cmu_systems
from adapters.cmu.extract import EXT_DEPENDENT_COUNT
from adapters.css import extract as css_extract
from adapters.msnas import ledger as msnas_ledger


class NotCanonical(Exception):
    """A file holds something SQL does not read exactly as the Python parser: run Python."""


_DIGITS = "'^[0-9]{0,18}$'"
_JSON_INT = "'^-?(0|[1-9][0-9]{0,17})$'"
_SAFE = "'^\"[ !#-\\[\\]-~]*\"$'"
"""A JSON string of printable ASCII without escapes: its text between the quotes is its value."""


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _json_q(text: str) -> str:
    """``text`` as the JSON text DuckDB gives for a JSON-typed string value."""
    return sql_literal('"' + text + '"')


def _csv(path: Path, names: tuple[str, ...]) -> str:
    cols = ", ".join(f"{sql_literal(n)}: 'VARCHAR'" for n in names)
    return (
        f"read_csv({sql_literal(str(path))}, header=true, auto_detect=false, delim=',', quote='', "
        f"escape='', strict_mode=true, null_padding=false, columns={{{cols}}})"
    )


def _lines(path: Path) -> str:
    return (
        f"read_csv({sql_literal(str(path))}, header=false, auto_detect=false, delim='\\x01', "
        f"quote='', escape='', strict_mode=true, columns={{'line': 'VARCHAR'}})"
    )


def _first_line(path: Path) -> str:
    with path.open("r", encoding="utf-8", newline="") as f:
        return f.readline()


def _check_header(path: Path, header: tuple[str, ...]) -> None:
    if tuple(next(csv.reader([_first_line(path)]), ())) != header:
        raise NotCanonical(f"{path.name}: header")


# --- the ledger's expectations (services.reconcile.expected_records) -------------------------


def _ledger_sql(path: Path, institutions: frozenset[str]) -> str:
    names = msnas_ledger.HEADER
    numeric = ("dependents", "health", "family", "work_accident", "old_age", "total")
    bad = " OR ".join(
        [
            "record IS NULL OR record NOT IN ('member', 'contribution', 'claim')",
            *(f"NOT regexp_matches(coalesce({c}, ''), {_DIGITS})" for c in numeric),
            *(f"contains(coalesce({c}, ''), '\"')" for c in names),
        ]
    )

    def num(c: str) -> str:
        return f"coalesce(nullif({c}, ''), '0')::BIGINT"

    def s(c: str) -> str:
        return f"coalesce({c}, '')"

    def rec(inst: str, kind: str, period: str, branch: str, ref: str, amount: str,
            package: str, status: str, deps: str, cperiod: str) -> str:  # fmt: skip
        return (
            f"{{'institution': '{inst}', 'kind': '{kind}', 'period': {period}, "
            f"'branch': '{branch}', 'ref': {ref}, 'amount': {amount}, 'package': {package}, "
            f"'status': {status}, 'dependents': {deps}, 'compared_period': {cperiod}}}"
        )

    has = "list_contains(string_split(coalesce(branches, ''), '+'), '{}')"
    member, contrib, claim = [], [], []
    if "cmu" in institutions:
        member.append(
            rec(
                "cmu",
                "affiliation",
                "''",
                "",
                "''",
                "0",
                s("package"),
                s("status"),
                num("dependents") + "::INTEGER",
                "''",
            )
        )
        contrib.append(
            f"CASE WHEN {num('health')} > 0 THEN "
            + rec(
                "cmu",
                "contribution",
                s("period"),
                "health",
                "''",
                num("health"),
                "''",
                "''",
                "-1",
                "''",
            )
            + " END"
        )
        claim.append(
            rec(
                "cmu",
                "claim",
                "''",
                "",
                s("claim_id"),
                num("total"),
                "''",
                s("status"),
                "-1",
                s("period"),
            )
        )
    if "css" in institutions:
        deps = f"CASE WHEN {has.format('family')} THEN {num('dependents')} ELSE -1 END::INTEGER"
        member.append(
            f"CASE WHEN {has.format('family')} OR {has.format('work_accident')} THEN "
            + rec("css", "affiliation", "''", "", "''", "0", "''", s("status"), deps, "''")
            + " END"
        )
        for branch in ("family", "work_accident"):
            contrib.append(
                f"CASE WHEN {num(branch)} > 0 THEN "
                + rec(
                    "css",
                    "contribution",
                    s("period"),
                    branch,
                    "''",
                    num(branch),
                    "''",
                    "''",
                    "-1",
                    "''",
                )
                + " END"
            )
    if "ipres" in institutions:
        member.append(
            f"CASE WHEN {has.format('old_age')} THEN "
            + rec("ipres", "affiliation", "''", "", "''", "0", "''", s("status"), "-1", "''")
            + " END"
        )
        contrib.append(
            f"CASE WHEN {num('old_age')} > 0 THEN "
            + rec(
                "ipres",
                "contribution",
                s("period"),
                "old_age",
                "''",
                num("old_age"),
                "''",
                "''",
                "-1",
                "''",
            )
            + " END"
        )
    rec_list = "STRUCT(institution VARCHAR, kind VARCHAR, period VARCHAR, branch VARCHAR, " \
        "ref VARCHAR, amount BIGINT, package VARCHAR, status VARCHAR, dependents INTEGER, " \
        "compared_period VARCHAR)[]"  # fmt: skip

    def lst(items: list[str]) -> str:
        return f"[{', '.join(items)}]" if items else f"[]::{rec_list}"

    return f"""
        SELECT coalesce(member_id, '') AS m, coalesce(event_id, '') AS ev, ({bad}) AS bad,
               unnest(CASE WHEN ({bad}) THEN [NULL]::{rec_list}
                           WHEN record = 'member' THEN {lst(member)}
                           WHEN record = 'contribution' THEN {lst(contrib)}
                           ELSE {lst(claim)} END) AS r
        FROM {_csv(path, names)}
    """


def insert_ledger(con: Any, path: Path, institutions: frozenset[str]) -> None:
    _check_header(path, msnas_ledger.HEADER)
    con.execute(
        f"""INSERT INTO recs
        SELECT m, coalesce(r.institution, ''), coalesce(r.kind, ''), r.period, r.branch, r.ref,
               r.amount, r.package, r.status, r.dependents, ev, r.compared_period,
               CASE WHEN bad THEN 9 ELSE 0 END
        FROM ({_ledger_sql(path, institutions)})
        WHERE bad OR r IS NOT NULL"""
    )


# --- the extracts ----------------------------------------------------------------------------


def insert_css(con: Any, path: Path) -> None:
    _check_header(path, css_extract.HEADER)
    bad = (
        "record IS NULL OR record NOT IN ('affiliate', 'contribution') "
        f"OR NOT regexp_matches(coalesce(dependents, ''), {_DIGITS}) "
        "OR (record = 'contribution' AND (coalesce(branch, '') NOT IN ('family', "
        f"'work_accident') OR NOT regexp_matches(coalesce(amount, ''), '^[0-9]{{1,18}}$') "
        "OR NOT regexp_matches(coalesce(period, ''), '^[ -~]{4}-[ -~]{2}$'))) OR "
        + " OR ".join(f"contains(coalesce({c}, ''), '\"')" for c in css_extract.HEADER)
    )
    con.execute(
        f"""INSERT INTO recs
        SELECT coalesce(member_id, ''), 'css',
               CASE WHEN record = 'affiliate' THEN 'affiliation' ELSE 'contribution' END,
               CASE WHEN record = 'affiliate' THEN '' ELSE period END,
               CASE WHEN record = 'affiliate' THEN '' ELSE branch END, '',
               CASE WHEN record = 'affiliate' THEN 0 ELSE amount::BIGINT END,
               '', CASE WHEN record = 'affiliate' THEN coalesce(status, '') ELSE '' END,
               CASE WHEN record = 'affiliate' AND coalesce(dependents, '') <> ''
                    THEN dependents::INTEGER ELSE -1 END,
               '', '', CASE WHEN {bad} THEN 9 ELSE 1 END
        FROM {_csv(path, css_extract.HEADER)}"""
    )


def insert_ipres(con: Any, path: Path) -> None:
    """The statement's structure is checked as ``parse_extract`` checks it: one header, first;
    one trailer, last, whose count and control total agree; every line whole (the bytes of the
    lines and their line ends add up to the file's size, so no line was skipped)."""
    first = _first_line(path)
    ending = 2 if first.endswith("\r\n") else 1
    header = first.rstrip("\r\n")
    if not (len(header) == 35 and header.startswith("H01IPRES     ")):
        raise NotCanonical("ipres: header")
    with path.open("rb") as f:
        f.seek(max(path.stat().st_size - 64, 0))
        last = f.read().decode("utf-8", "replace").rstrip("\r\n").rsplit("\n", 1)[-1]
    if not last.startswith("T"):
        raise NotCanonical("ipres: trailer is not the last line")
    a_line = "regexp_matches(line, '^A[ -~]{23}[ASLD]$')"
    c_line = "regexp_matches(line, '^C[ -~]{23}[0-9]{16}$')"
    row = con.execute(
        f"""SELECT count(*) FILTER (WHERE NOT ({a_line} OR {c_line}
                       OR regexp_matches(line, '^T[0-9]{{27}}$') OR line = {sql_literal(header)})),
                   count(*) FILTER (WHERE starts_with(line, 'H')),
                   count(*) FILTER (WHERE starts_with(line, 'T')),
                   count(*) FILTER (WHERE {a_line} OR {c_line}),
                   coalesce(sum(CASE WHEN {c_line} THEN substr(line, 31, 10)::BIGINT END), 0),
                   max(line) FILTER (WHERE starts_with(line, 'T')),
                   coalesce(sum(strlen(line)), 0), count(*)
            FROM {_lines(path)}"""
    ).fetchone()
    other, heads, tails, count, total, trailer, chars, lines = row
    size = path.stat().st_size
    if (other, heads, tails) != (0, 1, 1) or trailer != last:
        raise NotCanonical("ipres: structure")
    if chars + lines * ending not in (size, size + ending):
        raise NotCanonical("ipres: lines not read whole")
    if (int(trailer[1:10]), int(trailer[10:])) != (count, total):
        raise NotCanonical("ipres: trailer")
    con.execute(
        f"""INSERT INTO recs
        SELECT rtrim(substr(line, 2, 23), ' '), 'ipres',
               CASE WHEN kind = 'A' THEN 'affiliation' ELSE 'contribution' END,
               CASE WHEN kind = 'A' THEN '' ELSE substr(line, 25, 4) || '-' || substr(line, 29, 2)
               END,
               CASE WHEN kind = 'A' THEN '' ELSE 'old_age' END, '',
               CASE WHEN kind = 'A' THEN 0 ELSE substr(line, 31, 10)::BIGINT END, '',
               CASE WHEN kind = 'C' THEN '' ELSE CASE substr(line, 25, 1)
                    WHEN 'A' THEN 'active' WHEN 'S' THEN 'suspended' WHEN 'L' THEN 'lapsed'
                    ELSE 'deceased' END END,
               -1, '', '', 1
        FROM (SELECT line, substr(line, 1, 1) AS kind FROM {_lines(path)})
        WHERE kind IN ('A', 'C')"""
    )


def _cmu_sql(path: Path) -> str:
    """CMU's resources as ``parse_extract`` + ``claims_by_id`` read them; ``bad`` where a
    value is not of the type and shape the Python reader would accept the same way."""
    s = cmu_systems

    def text(v: str) -> str:  # the value of a JSON string checked by _SAFE
        return f"substr(({v})::VARCHAR, 2, length(({v})::VARCHAR) - 2)"

    def safe(v: str) -> str:
        return f"coalesce(regexp_matches(({v})::VARCHAR, {_SAFE}), false)"

    def integer(v: str) -> str:
        return f"coalesce(regexp_matches(({v})::VARCHAR, {_JSON_INT}), false)"

    def ext(url: str) -> str:
        return f"list_filter(extension, lambda x: x.url = {_json_q(url)})[1]"

    def money(v: str) -> str:
        return f"(coalesce({v}.currency = '\"XOF\"', false) AND {integer(v + '.value')})"

    cov_id = f"list_filter(identifier, lambda x: x.system = {_json_q(s.COVERAGE_ID)})[1].value"
    claim_id = f"list_filter(identifier, lambda x: x.system = {_json_q(s.CLAIM_ID)})[1].value"
    status_ext = ext(s.EXT_MEMBER_STATUS)
    deps_ext = ext(EXT_DEPENDENT_COUNT)
    period = f"{ext(s.EXT_CONTRIBUTION_PERIOD)}.valuePeriod.start"
    plan = "class[1].value"
    beneficiary = "patient.identifier.value"
    start = "billablePeriod.start"
    ok_coverage = (
        f"{safe(cov_id)} AND ({plan} IS NULL OR {safe(plan)}) AND "
        f"(CASE WHEN {status_ext} IS NOT NULL THEN {safe(status_ext + '.valueCode')} "
        f"ELSE {safe('status')} END) AND "
        f"({deps_ext} IS NULL OR {integer(deps_ext + '.valueInteger')})"
    )
    ok_payment = (
        f"{safe('request.identifier.value')} AND {money('amount')} AND {safe(period)} "
        f"AND length({period}) >= 9"
    )
    ok_claim = (
        f"{safe(claim_id)} AND {safe(beneficiary)} AND {safe(start)} AND length({start}) >= 9 "
        f"AND {money('total')} AND {safe('status')}"
    )
    b = text(beneficiary)
    member_of_claim = (
        f"CASE WHEN length({b}) - length(replace({b}, '-', '')) = 3 AND contains({b}, '-D') "
        f"THEN regexp_extract({b}, '^(.*)-D', 1) ELSE {b} END"
    )
    ident = "STRUCT(system JSON, value JSON)[]"
    ext_type = (
        "STRUCT(url JSON, valuePeriod STRUCT(start JSON), valueCode JSON, valueInteger JSON)[]"
    )
    columns = (
        f"{{resourceType: 'JSON', identifier: '{ident}', status: 'JSON', "
        f"class: 'STRUCT(value JSON)[]', extension: '{ext_type}', "
        f"request: 'STRUCT(identifier STRUCT(value JSON))', "
        f"amount: 'STRUCT(value JSON, currency JSON)', "
        f"patient: 'STRUCT(identifier STRUCT(value JSON))', "
        f"billablePeriod: 'STRUCT(start JSON)', total: 'STRUCT(value JSON, currency JSON)'}}"
    )
    return f"""
        SELECT CASE WHEN rt = 'P' THEN {text("request.identifier.value")}
                    WHEN rt = 'V' THEN {text(cov_id)} WHEN rt = 'C' THEN {member_of_claim}
                    ELSE '' END AS member_id,
               CASE rt WHEN 'P' THEN 'contribution' WHEN 'V' THEN 'affiliation'
                       WHEN 'C' THEN 'claim' ELSE '' END AS kind,
               CASE WHEN rt = 'P' THEN substr({text(period)}, 1, 7) ELSE '' END AS period,
               CASE WHEN rt = 'P' THEN 'health' ELSE '' END AS branch,
               CASE WHEN rt = 'C' THEN {text(claim_id)} ELSE '' END AS ref,
               CASE WHEN rt = 'P' THEN amount.value::VARCHAR::BIGINT
                    WHEN rt = 'C' THEN total.value::VARCHAR::BIGINT ELSE 0 END AS amount,
               CASE WHEN rt = 'V' THEN coalesce({text(plan)}, '') ELSE '' END AS package,
               CASE WHEN rt = 'V' THEN coalesce({text(status_ext + ".valueCode")},
                                                {text("status")})
                    WHEN rt = 'C' THEN {text("status")} ELSE '' END AS status,
               CASE WHEN rt = 'V' THEN coalesce(({deps_ext}).valueInteger::VARCHAR::INTEGER, -1)
                    ELSE -1 END AS dependents,
               CASE WHEN rt = 'C' THEN substr({text(start)}, 1, 7) ELSE '' END AS cperiod,
               CASE WHEN rt = 'X' THEN false WHEN rt = '?' THEN true
                    WHEN rt = 'V' THEN NOT ({ok_coverage})
                    WHEN rt = 'P' THEN NOT ({ok_payment})
                    ELSE NOT ({ok_claim}) END AS bad
        FROM (SELECT *, CASE resourceType WHEN '"PaymentNotice"' THEN 'P'
                        WHEN '"Coverage"' THEN 'V' WHEN '"Claim"' THEN 'C'
                        ELSE CASE WHEN resourceType IS NULL THEN '?' ELSE 'X' END END AS rt
              FROM read_json({sql_literal(str(path))}, format='newline_delimited', records=true,
                             columns={columns}))
    """


def insert_cmu(con: Any, path: Path) -> None:
    con.execute(
        f"""INSERT INTO recs
        SELECT member_id, 'cmu', kind, period, branch, ref, amount, package, status, dependents,
               '', cperiod, CASE WHEN bad THEN 9 ELSE 1 END
        FROM ({_cmu_sql(path)}) WHERE bad OR kind <> ''"""
    )
