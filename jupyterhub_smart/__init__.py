"""jupyterhub-smart: SMART on FHIR for JupyterHub.

Sub-packages, each importing only from those listed before it (and the
``jupyterhub-smart`` command's modules from :mod:`jupyterhub_smart.cli`, for
the argument types they share):

- :mod:`jupyterhub_smart.smart`: the SMART protocol core and the FHIR syntax
  rules, framework-free.
- :mod:`jupyterhub_smart.views`: tables from FHIR resources (SQL on FHIR
  ViewDefinitions); it imports none of the others.
- :mod:`jupyterhub_smart.audit`: the hash-chained audit trail.
- :mod:`jupyterhub_smart.hub`: JupyterHub integration, ``SMARTAuthenticator``.
- :mod:`jupyterhub_smart.bulk`: FHIR Bulk Data export into Parquet (Backend
  Services, resumable); it imports neither ``hub`` nor ``notebook``.
- :mod:`jupyterhub_smart.notebook`: what runs in a user's kernel, ``connect()``;
  it never imports ``hub`` (kernels load no JupyterHub code).
- :mod:`jupyterhub_smart.sandbox`: the embedded SMART sandbox EHR; it imports
  none of the others, so that it stays an independent reference for the tests.

``tests/test_layers.py`` holds the package to this. ``docs/`` has the guides
for administrators, researchers and the sandbox.
"""

__version__ = "0.1.0.dev0"
