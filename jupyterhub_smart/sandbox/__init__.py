"""jupyterhub_smart.sandbox."""
