"""``python -m jupyterhub_smart.proxy``: the command the hub starts the FHIR proxy with."""

from __future__ import annotations

import sys

from .app import main

sys.exit(main())
