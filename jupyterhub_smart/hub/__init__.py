"""JupyterHub integration: the SMART on FHIR authenticator, its handlers and token API."""
