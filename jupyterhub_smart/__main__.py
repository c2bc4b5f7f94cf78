"""``python -m jupyterhub_smart`` is the ``jupyterhub-smart`` command."""

import sys

from jupyterhub_smart.cli import main

sys.exit(main())
