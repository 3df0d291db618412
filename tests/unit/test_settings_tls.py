"""TLS settings are refused at start-up when they would push in clear or cannot load."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from adapters.base import Institution
from router.channels import tls_context
from services.bootstrap import partner_tls
from services.cli import api_tls
from services.settings import InvalidSettings, load_settings
from tests.tls import make_pki

pytestmark = pytest.mark.unit

SECRET = "css-shared-secret-for-tests-0123456789"


def _css(**fields: object) -> dict[str, object]:
    return {"css": {"mode": "http", "secret": SECRET, **fields}}


def test_plain_http_is_refused_unless_allowed_for_a_loopback_peer() -> None:
    with pytest.raises(InvalidSettings, match=r"JOKKO_CSS: .*url must be https://"):
        load_settings(**_css(url="http://css.example/jokko"))
    with pytest.raises(InvalidSettings, match="must be https://"):
        load_settings(**_css(url="http://127.0.0.1:8080/jokko"))
    with pytest.raises(InvalidSettings, match=r"loopback peers only, not 10\.1\.2\.3"):
        load_settings(**_css(url="http://10.1.2.3/jokko", allow_plain_http=True))
    for host in ("127.0.0.1", "localhost", "[::1]"):
        s = load_settings(**_css(url=f"http://{host}:8080/jokko", allow_plain_http=True))
        assert s.css.url is not None
        assert s.css.url.scheme == "http"


def test_https_partner_with_its_files_loads_and_bad_files_are_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    good = load_settings(**_css(url="https://css.example/jokko", **pki.partner_settings()))
    assert good.css.ca_file == pki.ca
    context = partner_tls(Institution.CSS, good.css)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    # only the relay loads the files (the API's container need not hold Jokko's client key)
    missing = load_settings(**_css(url="https://css.example/jokko", ca_file=tmp_path / "no.pem"))
    with pytest.raises(InvalidSettings, match=r"JOKKO_CSS__CA_FILE.*do not load.*No such file"):
        partner_tls(Institution.CSS, missing.css)
    wrong_key = load_settings(  # a key that is not the certificate's
        **_css(
            url="https://css.example/jokko",
            client_cert_file=pki.client.cert,
            client_key_file=pki.server.key,
        )
    )
    with pytest.raises(InvalidSettings, match=r"JOKKO_CSS__CLIENT_KEY_FILE.*do not load"):
        partner_tls(Institution.CSS, wrong_key.css)
    with pytest.raises(InvalidSettings, match="go together"):
        load_settings(**_css(url="https://css.example/jokko", client_cert_file=pki.client.cert))
    with pytest.raises(InvalidSettings, match="need an https:// url"):
        load_settings(
            **_css(url="http://127.0.0.1/j", allow_plain_http=True, **pki.partner_settings())
        )


def test_the_client_context_presents_jokkos_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with_cert = tls_context(pki.ca, pki.client.cert, pki.client.key)
    # the CA given is the only one trusted: not the system's store as well
    assert [c["subject"] for c in with_cert.get_ca_certs()] == [
        ((("organizationName", "Jokko tests"),), (("commonName", "Jokko test CA"),))
    ]


def test_api_tls_settings_become_uvicorns_options(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    assert api_tls(load_settings()) == {}
    served = load_settings(api_tls_cert_file=pki.server.cert, api_tls_key_file=pki.server.key)
    assert api_tls(served) == {
        "ssl_certfile": str(pki.server.cert),
        "ssl_keyfile": str(pki.server.key),
    }
    mutual = load_settings(
        api_tls_cert_file=pki.server.cert,
        api_tls_key_file=pki.server.key,
        api_tls_client_ca_file=pki.ca,
    )
    assert api_tls(mutual)["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert api_tls(mutual)["ssl_ca_certs"] == str(pki.ca)
    with pytest.raises(InvalidSettings, match="JOKKO_API_TLS_CLIENT_CA_FILE needs"):
        load_settings(api_tls_client_ca_file=pki.ca)
    with pytest.raises(InvalidSettings, match="go together"):
        load_settings(api_tls_cert_file=pki.server.cert)
    mismatched = load_settings(api_tls_cert_file=pki.server.cert, api_tls_key_file=pki.client.key)
    with pytest.raises(InvalidSettings, match=r"JOKKO_API_TLS_KEY_FILE.*do not load"):
        api_tls(mismatched)
