"""jupyterhub_smart.notebook."""
