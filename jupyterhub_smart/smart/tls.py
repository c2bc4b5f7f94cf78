"""TLS trust for connections to EHRs: an internal CA's bundle, checked once at start-up.

Hospitals' EHRs often present certificates from the hospital's own CA, which no
public bundle (certifi) holds. ``SMARTAuthenticator.ehr_ca_bundle`` names a PEM
file of such CA certificates; the hub's EHR client and the FHIR proxy's TLS pool
both verify against a context built here, so the two can never trust different
CAs. Verification itself is never turned off: there is no setting for that.
A file that is missing, unreadable, not PEM, holds no CA certificate, or holds
a private key (a secret has no place in a trust file) is refused with a
message naming the problem, so the hub stops at start-up rather than failing
each sign-in.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["ca_bundle_context", "untrusted_certificate"]

_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PEM_PRIVATE_KEY = b"PRIVATE KEY-----"


def ca_bundle_context(path: str) -> ssl.SSLContext:
    """A client context that verifies servers against the CA certificates in ``path`` only.

    The bundle replaces the default trust (as ``SSL_CERT_FILE`` does): to trust
    public CAs as well, append certifi's bundle (``python -m certifi``) to it.
    Raises ValueError naming what is wrong with the file.
    """
    file = Path(path).expanduser()
    try:
        pem = file.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{path!r} is a directory, not a PEM file of CA certificates") from None
    except OSError as exc:
        raise ValueError(
            f"{path!r} cannot be read ({exc.strerror or type(exc).__name__})"
        ) from None
    if _PEM_PRIVATE_KEY in pem:
        raise ValueError(
            f"{path!r} holds a private key; a CA bundle holds certificates only (remove the key "
            "and keep it secret)"
        )
    if _PEM_CERTIFICATE not in pem:
        raise ValueError(f"{path!r} is not a PEM file of certificates (no BEGIN CERTIFICATE)")
    try:
        # cadata given: the system's and certifi's CAs are NOT loaded (the bundle replaces them)
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cadata=pem.decode("ascii", errors="replace")
        )
    except ssl.SSLError as exc:
        why = exc.reason or (exc.args[-1] if exc.args else type(exc).__name__)
        raise ValueError(f"{path!r} holds a malformed certificate ({why})") from None
    if context.cert_store_stats().get("x509_ca", 0) < 1:
        raise ValueError(
            f"{path!r} holds no CA certificate (basicConstraints CA:TRUE); give the CA that "
            "signed the EHR's certificate, not the EHR's own certificate"
        )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def untrusted_certificate(exc: BaseException) -> str | None:
    """Why the peer's certificate was refused, when ``exc`` (or its cause) is that; else None.

    httpx and httpcore wrap the ``ssl`` error in their own ``ConnectError``;
    the reason (``unable to get local issuer certificate`` ...) says nothing
    secret and tells an admin at once that trust, not the network, is at fault.
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or "certificate verify failed")
        seen = seen.__cause__ or seen.__context__
    return None
