"""``jokko api`` serving TLS itself, client certificates required (JOKKO_API_TLS_*)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from router.channels import tls_context
from services.settings import Settings
from tests.infra import free_port
from tests.integration.test_api import start_jokko_api
from tests.tls import make_pki

pytestmark = pytest.mark.integration


def test_jokko_api_serves_https_and_requires_a_client_certificate(
    jokko_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    institution = pki.authority.issue("css-client", server=False)
    settings = jokko_settings(
        api_port=free_port(),
        api_tls_cert_file=pki.server.cert,
        api_tls_key_file=pki.server.key,
        api_tls_client_ca_file=pki.ca,
    )
    with_certificate = tls_context(pki.ca, institution.cert, institution.key)
    proc, url = start_jokko_api(settings, tmp_path / "api.log", tls=with_certificate)
    try:
        assert url.startswith("https://")
        health = httpx.get(f"{url}/healthz", verify=with_certificate)
        assert (health.status_code, health.json()["status"]) == (200, "ok")
        # the institution's client answered 401 without a token: TLS let it through
        assert httpx.get(f"{url}/v1/deliveries", verify=with_certificate).status_code == 401
        # a client without a certificate never gets an HTTP answer
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", verify=tls_context(pki.ca))
        # nor does one that speaks plain HTTP to the TLS port
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https://", "http://") + "/healthz")
        # and a client that does not trust the test CA refuses the API's certificate
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz", verify=tls_context(None))
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code in (0, -signal.SIGTERM), (tmp_path / "api.log").read_text()
