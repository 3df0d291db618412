"""The FHIR server contract (tests/contract/test_cmu_server.py) on the real server, HAPI FHIR's
JPA server (R4B): the same suite the fake CMU runs, so both refuse and accept the same.

The server is shared by the session and keeps what it is sent: each test posts the examples
under member, claim and maternity numbers of its own (a suffix), so that what another test
created (a member enrolled, a claim held) does not change its answers.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from adapters.base import OutboundMessage
from tests.contract.test_cmu_server import FhirServerContract, Json
from tests.infra import FhirServer

pytestmark = [
    pytest.mark.integration,
    # The first test here may wait for the server's start (the session fixture).
    pytest.mark.timeout(900),
]

FHIR_JSON = "application/fhir+json"
# The business numbers a member's resources are found by (conditional creates and references).
OWN_NUMBERS = re.compile(rb"(MSNAS-[A-Z]{2}-\d{6}|CLM-\d{4}-\d{6}|MAT-\d{4}-\d{6})")


class TestHapiServer(FhirServerContract):
    """The contract on HAPI FHIR, over HTTP."""

    @pytest.fixture(autouse=True)
    def _server(self, fhir_server: FhirServer) -> Iterator[None]:
        self.suffix = b"-H" + uuid.uuid4().hex[:8].upper().encode()
        with httpx.Client(base_url=fhir_server.base_url, timeout=120) as client:
            self.client = client
            yield

    def post(self, message: OutboundMessage) -> tuple[int, Json]:
        body = OWN_NUMBERS.sub(lambda m: m.group(1) + self.suffix, message.body)
        r = self.client.post("", content=body, headers={"Content-Type": FHIR_JSON})
        answer: Json = json.loads(r.content)
        return r.status_code, answer
