"""``jupyterhub-smart keys``: make and inspect the hub's ``private_key_jwt`` keys.

``keys generate --alg RS384|ES384 --out DIR`` writes a private PEM (mode 600)
and adds the public key to ``DIR/jwks.json``, the file to register with an EHR
(or serve: the hub also publishes it at ``/hub/smart/jwks.json``).
``keys jwks KEYFILE...`` prints the public JWK Set of existing private keys.
Neither ever prints private key material.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``keys`` command to the ``jupyterhub-smart`` parser."""
    keys = subparsers.add_parser(
        "keys", help="make and inspect signing keys for private_key_jwt client authentication"
    )
    keys.set_defaults(func=lambda args: (keys.print_help(), 2)[1])
    sub = keys.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND")

    gen = sub.add_parser("generate", help="generate a private key and a public JWK Set")
    gen.add_argument("--alg", required=True, choices=["RS384", "ES384"], help="signing algorithm")
    gen.add_argument("--out", required=True, help="directory for the private PEM and jwks.json")
    gen.add_argument("--kid", default=None, help="key id (default: the RFC 7638 thumbprint)")
    gen.add_argument(
        "--rsa-bits", type=int, default=3072, help="RSA modulus size for RS384 (default 3072)"
    )
    gen.set_defaults(func=_generate)

    show = sub.add_parser("jwks", help="print the public JWK Set of private key files")
    show.add_argument("key_files", nargs="+", metavar="KEYFILE", help="private key PEM files")
    show.add_argument("--kid", default=None, help="key id to publish (one key file only)")
    show.set_defaults(func=_jwks)


def _generate(args: argparse.Namespace) -> int:
    from .keys import write_key_pair

    try:
        pem_path, jwks_path = write_key_pair(
            args.alg, args.out, key_id=args.kid, rsa_bits=args.rsa_bits
        )
    except (ValueError, OSError) as exc:
        print(f"jupyterhub-smart keys generate: {exc}", file=sys.stderr)
        return 1
    print(f"private key (keep secret, mode 600): {pem_path}")
    print(f"public JWK Set (register with the EHR): {jwks_path}")
    print("hub configuration, per issuer:")
    print(f'    "client_auth": "private_key_jwt", "private_key_path": "{pem_path}",')
    return 0


def _jwks(args: argparse.Namespace) -> int:
    from .keys import load_private_key, public_jwks

    if args.kid and len(args.key_files) != 1:
        print("jupyterhub-smart keys jwks: --kid needs exactly one key file", file=sys.stderr)
        return 2
    try:
        keys = [load_private_key(path, args.kid) for path in args.key_files]
    except ValueError as exc:
        print(f"jupyterhub-smart keys jwks: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps(public_jwks(keys), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
