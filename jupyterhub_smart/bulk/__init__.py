"""jupyterhub_smart.bulk."""
