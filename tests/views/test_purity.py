"""The views package stands alone: no notebook, hub, bulk or sandbox code, no pandas.

The notebook and the Bulk Data code build on it, never the other way round;
and compiling a view does not even import pyarrow (only building a table does).
"""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(','.join(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(result.stdout.strip().split(","))


def test_views_import_no_other_part_of_the_project_and_no_pandas():
    loaded = imported_after(
        "import jupyterhub_smart.views, jupyterhub_smart.views.cli, jupyterhub_smart.views.ndjson, "
        "jupyterhub_smart.views.writers, jupyterhub_smart.views.table, jupyterhub_smart.views.builtin"
    )
    parts = ("hub", "notebook", "bulk", "sandbox", "audit", "smart", "demo")
    assert not {
        m for m in loaded if m.split(".")[:2][-1] in parts and m.startswith("jupyterhub_smart.")
    }
    assert "pandas" not in loaded


def test_compiling_a_view_does_not_import_pyarrow():
    loaded = imported_after(
        "from jupyterhub_smart.views import compile_view, builtin\n"
        "compile_view(builtin.load('Observation'))"
    )
    assert "pyarrow" not in loaded
