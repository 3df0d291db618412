"""The outbound adapters Jokko delivers to: one line per institution."""

from __future__ import annotations

from adapters import cmu, css, ipres
from adapters.base import Institution, OutboundAdapter


def outbound_adapters() -> dict[Institution, OutboundAdapter]:
    return {Institution.CMU: cmu, Institution.CSS: css, Institution.IPRES: ipres}
