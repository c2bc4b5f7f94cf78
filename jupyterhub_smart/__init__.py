"""jupyterhub-smart: SMART on FHIR for JupyterHub.

Sub-packages (dependencies point one way, see docs/ and DESIGN.md):

- :mod:`jupyterhub_smart.smart`: the SMART protocol core, framework-free.
- :mod:`jupyterhub_smart.hub`: JupyterHub integration (``SMARTAuthenticator``).
- :mod:`jupyterhub_smart.notebook`: what runs in a user's kernel (``connect()``).
- :mod:`jupyterhub_smart.audit`: the hash-chained audit trail.
- :mod:`jupyterhub_smart.sandbox`: the embedded SMART sandbox EHR.
"""

__version__ = "0.1.0.dev0"
