"""CSS (Caisse de Sécurité Sociale) adapter: family benefits, maternity cash, AT/MP.

Canonical events become XML documents in the namespace ``urn:sn:css:jokko:v1``, checked against
``css-v1.xsd`` (package data, compiled on first use); CSS answers with an ``Acknowledgement``.
The wire format is described element by element in ``FORMAT.md`` beside this file.
"""

from __future__ import annotations

from adapters.base import Institution
from adapters.css._check import parse_ack, validate
from adapters.css._translate import translate
from adapters.css._wire import FORMAT_VERSION, NAMESPACE
from adapters.css.batch import batch_part, encode_batch, split_batch

INSTITUTION = Institution.CSS

__all__ = [
    "FORMAT_VERSION",
    "INSTITUTION",
    "NAMESPACE",
    "batch_part",
    "encode_batch",
    "parse_ack",
    "split_batch",
    "translate",
    "validate",
]
