"""Which JupyterHub line this run tests.

``make test`` runs the hub suite twice: on the JupyterHub that ``.[test]``
installs (6.x) and on 5.5, the line Zero to JupyterHub's hub image ships,
overlaid with ``PYTHONPATH`` and named in ``SMART_EXPECT_JUPYTERHUB``. This test
makes that second pass fail loudly if the overlay silently did not apply, in the
test process or in the hub it started.
"""

from __future__ import annotations

import os

import httpx
import jupyterhub
import oauthenticator

from .conftest import SmartEnv


def test_the_expected_jupyterhub_line_runs(smart_env: SmartEnv) -> None:
    served = httpx.get(f"{smart_env.hub.url}/hub/api/", timeout=10).json()["version"]
    assert served == jupyterhub.__version__  # the hub process imports what this process does
    expected = os.environ.get("SMART_EXPECT_JUPYTERHUB", "")
    assert served.startswith(expected), f"asked for JupyterHub {expected}, running {served}"
    major = int(served.split(".")[0])
    assert major in (5, 6), f"JupyterHub {served} is outside the supported lines 5.5 and 6.x"
    assert oauthenticator.__version__.startswith("17."), oauthenticator.__version__
