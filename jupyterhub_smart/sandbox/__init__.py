"""The sandbox EHR: a strict SMART authorization server, a FHIR R4 server and an EHR launcher.

``jupyterhub-smart sandbox`` serves it (:mod:`.cli`); :mod:`.auth` is the
authorization server, :mod:`.fhir` the FHIR server, :mod:`.ehr` the launcher
pages. Its web servers come from the ``[sandbox]`` extra (Flask, Waitress,
Authlib), which a hub deployment does not install. It shares no code with the
client side, so that it stays the tests' independent reference (see
``docs/sandbox.md``).
"""
