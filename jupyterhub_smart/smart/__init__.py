"""The SMART protocol core: pure, framework-free client side of SMART App Launch.

One module per job; import what you need from the module itself (this package
imports nothing, so that ``jupyterhub-smart --help`` stays fast):

* :mod:`.errors` - :class:`~.errors.SMARTError` and its kinds, safe to show and log;
* :mod:`.issuers` - issuer normalisation and the allow-list with per-issuer registrations;
* :mod:`.discovery` - ``.well-known/smart-configuration``, validated and cached;
* :mod:`.pkce` - PKCE S256, ``state`` and ``nonce``;
* :mod:`.authorize` - the authorization URL, the RFC 9207 callback check, EHR errors in words;
* :mod:`.keys`, :mod:`.keys_cli` - ``private_key_jwt`` signing keys and ``jupyterhub-smart keys``;
* :mod:`.client_auth` - public, ``client_secret_basic``, ``private_key_jwt`` (RS384/ES384);
* :mod:`.tokens` - code exchange, refresh, revocation;
* :mod:`.singleflight` - :class:`~.singleflight.SingleFlight`, one refresh in flight per key;
* :mod:`.id_token` - id_token verification against the issuer's pinned JWKS;
* :mod:`.scopes` - SMART v1/v2 scopes: parse, cover, missing;
* :mod:`.launch_context` - validated launch context and ``fhirUser`` references;
* :mod:`.fhir_rules` - FHIR ids, types, references, search parameter names, loopback hosts;
* :mod:`.tls` - trust for EHR connections: an internal CA bundle, checked at start-up.

HTTP goes through an ``httpx.AsyncClient`` that the caller passes in. See
``docs/smart-core.md`` for what each check defends against.
"""
