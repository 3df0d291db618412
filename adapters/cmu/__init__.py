"""CMU adapter: canonical events <-> HL7 FHIR R4B JSON (wire format v1, see FORMAT.md).

Pure: data in, data out. Every message is one transaction Bundle of conditional creates,
updates and patches keyed on business identifiers, so CMU applies a re-sent message once.
"""

from __future__ import annotations

from adapters.base import Institution
from adapters.cmu.acks import parse_ack, parse_answer
from adapters.cmu.batch import encode_batch, split_batch
from adapters.cmu.mapping import FORMAT_VERSION, translate
from adapters.cmu.validation import validate

INSTITUTION = Institution.CMU

__all__ = [
    "FORMAT_VERSION",
    "INSTITUTION",
    "encode_batch",
    "parse_ack",
    "parse_answer",
    "split_batch",
    "translate",
    "validate",
]
