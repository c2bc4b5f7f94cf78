"""The sandbox's SMART authorization server (Authlib grants plus SMART's rules).

One module per job: ``clients`` (registry file), ``context`` (launch and grant
context), ``storage`` (SQLite, hashed handles), ``keys`` (id_token key),
``client_auth`` (private_key_jwt), ``grant_types`` (Authlib grants and extensions),
``tokens`` (issuing and the FHIR server's lookup), ``introspection``,
``revocation``, ``discovery``, ``pending``/``csrf``/``people``/``pages`` (the
interactive authorize flow), and ``server`` (assembly).
"""
