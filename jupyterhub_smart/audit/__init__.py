"""jupyterhub_smart.audit."""
