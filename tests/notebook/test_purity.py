"""The notebook client runs in kernels: it must not pull in the hub, JupyterHub or tornado."""

from __future__ import annotations

import subprocess
import sys


def test_notebook_package_imports_no_hub_code() -> None:
    code = (
        "import sys, jupyterhub_smart.notebook as n\n"
        "fhir = n.connect('http://127.0.0.1:9/fhir', token='t')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jupyterhub', 'tornado', "
        "'oauthenticator') or m.startswith('jupyterhub_smart.hub'))\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
