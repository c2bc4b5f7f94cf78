"""The id_token signing key, kept in ``--data-dir`` so restarts keep one ``kid``.

Clients cache the JWKS; a key that changed on every restart would make them
refetch (or, worse, fail) for no reason. The private key file is written with
mode 0600 and never logged.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

log = logging.getLogger(__name__)

#: OpenID Connect requires RS256 support of every client; SMART clients all have it.
ID_TOKEN_ALG = "RS256"  # noqa: S105 - an algorithm name, not a secret
KEY_FILE = "id_token_signing_key.json"


class SigningKey:
    """One RSA key pair used to sign id_tokens."""

    def __init__(self, key: RSAKey) -> None:
        self.key = key
        self.alg = ID_TOKEN_ALG

    @property
    def kid(self) -> str:
        return str(self.key.kid)

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set published at ``/auth/jwks``."""
        public = self.key.as_dict(private=False)
        public.setdefault("use", "sig")
        public.setdefault("alg", self.alg)
        return {"keys": [public]}

    @classmethod
    def load_or_create(cls, directory: Path) -> SigningKey:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / KEY_FILE
        if path.exists():
            try:
                key = RSAKey.import_key(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, JoseError) as exc:
                raise RuntimeError(
                    f"id_token signing key {path} is unreadable ({type(exc).__name__}); "
                    "delete it to generate a new one"
                ) from None
            if not key.kid:
                raise RuntimeError(f"id_token signing key {path} has no 'kid'; delete it")
            return cls(key)
        key = RSAKey.generate_key(
            2048, parameters={"use": "sig", "alg": ID_TOKEN_ALG}, auto_kid=True
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(key.as_dict(private=True), handle)
        log.info("generated a new id_token signing key (kid %s)", key.kid)
        return cls(key)
