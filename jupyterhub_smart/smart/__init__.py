"""jupyterhub_smart.smart."""
