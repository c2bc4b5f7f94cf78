"""ehr_ca_bundle: which files the hub accepts as the EHRs' CA bundle, from real files on disk.

A bad file must stop the hub at start-up (the constructor refuses), never
fail each sign-in later; a good one becomes the trust of the hub's EHR client.
That client reaching an EHR over TLS is tested in tests/proxy/test_ehr_tls.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pki import make_pki

from jupyterhub_smart.hub import SMARTAuthenticator

EHR = "https://ehr.example/fhir"


def _bad_files(where: Path) -> dict[str, tuple[Path, str]]:
    pki = make_pki(where / "pki")
    junk = where / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    der = where / "ca.der"
    der.write_bytes(b"\x30\x82\x01\x00" + b"\x00" * 64)
    with_key = where / "with-key.pem"
    with_key.write_bytes(pki.ca.read_bytes() + pki.server_key.read_bytes())
    return {
        "missing": (where / "nope.pem", "does not exist"),
        "directory": (where, "is a directory"),
        "not PEM": (der, "is not a PEM file of certificates"),
        "malformed": (junk, "holds a malformed certificate"),
        "leaf only": (pki.server_cert, "holds no CA certificate"),
        "private key": (with_key, "holds a private key"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "directory", "not PEM", "malformed", "leaf only", "private key"]
)
def test_a_bad_bundle_stops_the_hub_with_a_clear_message(
    tmp_path: Path, crypt_key: None, case: str
) -> None:
    path, words = _bad_files(tmp_path)[case]
    with pytest.raises(ValueError, match=r"SMARTAuthenticator\.ehr_ca_bundle: ") as raised:
        SMARTAuthenticator(issuers={EHR: {"client_id": "x"}}, ehr_ca_bundle=str(path))
    assert words in str(raised.value)


def test_a_ca_bundle_is_the_trust_of_the_ehr_client(tmp_path: Path, crypt_key: None) -> None:
    pki = make_pki(tmp_path / "pki")
    auth = SMARTAuthenticator(issuers={EHR: {"client_id": "x"}}, ehr_ca_bundle=str(pki.ca))
    context = auth.ehr.ssl_context
    assert context is not None
    assert context.check_hostname  # verification stays on
    (ca,) = context.get_ca_certs()  # that CA alone, not certifi's
    assert dict(x[0] for x in ca["subject"])["commonName"] == "audit test CA"
    default = SMARTAuthenticator(issuers={EHR: {"client_id": "x"}})
    assert default.ehr.ssl_context is None  # empty: httpx's default trust
