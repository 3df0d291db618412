"""IPRES adapter: nominative declaration files (fixed-width text), wire format v1.

Each ``OutboundMessage`` is one record line: ``A`` affiliation of the insured, ``B`` a
beneficiary (ayant droit), ``D`` the old-age share of a contribution for one member and month.
``build_declaration_file`` frames messages with a header and a trailer carrying the record count
and the control total; IPRES answers with an ack file read by ``parse_ack``. See FORMAT.md.
"""

from adapters.base import Institution
from adapters.ipres.files import (
    ControlTotalMismatch,
    DeclarationFile,
    DeclarationFileError,
    MalformedDeclarationFile,
    RecordCountMismatch,
    TrailerMismatch,
    build_ack_file,
    build_declaration_file,
    parse_ack,
    read_declaration_file,
)
from adapters.ipres.records import FORMAT_VERSION, Record
from adapters.ipres.translate import CONTENT_TYPE, translate, validate

INSTITUTION = Institution.IPRES

__all__ = [
    "CONTENT_TYPE",
    "FORMAT_VERSION",
    "INSTITUTION",
    "ControlTotalMismatch",
    "DeclarationFile",
    "DeclarationFileError",
    "MalformedDeclarationFile",
    "Record",
    "RecordCountMismatch",
    "TrailerMismatch",
    "build_ack_file",
    "build_declaration_file",
    "parse_ack",
    "read_declaration_file",
    "translate",
    "validate",
]
