"""What a researcher sees in a real Jupyter kernel: progress bars and short error messages.

The kernel is a real ipykernel driven by nbclient, against the real sandbox.
The access token reaches the kernel in a test-only environment variable (as in
the demo notebook's test); the saved notebook must not hold it.
"""

from __future__ import annotations

from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from sandbox_process import SandboxProcess

from .sandbox_tokens import system_token

PATIENT = "patient-00001"
LOGIN = "http://hub.example/hub/oauth_login?next=%2Fhub%2F"

CELLS = [
    # 0: a client with a real token
    "import os\n"
    "from jupyterhub_smart.notebook import connect, ReauthenticationRequired, SMARTNotebookError\n"
    "fhir = connect(os.environ['SMART_TEST_FHIR_BASE'],\n"
    "               token_provider=lambda: os.environ['SMART_TEST_TOKEN'], page_size=20)",
    # 1: a search of many pages: a progress bar without being asked
    "frame = fhir.search('Observation', patient=os.environ['SMART_TEST_PATIENT']).to_pandas()\n"
    "len(frame)",
    # 2: a one-page search: no bar
    "small = fhir.search('Patient', _id=os.environ['SMART_TEST_PATIENT']).to_pandas()",
    # 3: the hub says: sign in again (raised deep inside connect())
    "def ended():\n"
    f"    raise ReauthenticationRequired({LOGIN!r})\n"
    "session = connect(os.environ['SMART_TEST_FHIR_BASE'], token_provider=ended)",
    # 4: an error from the FHIR server
    "fhir.read('Patient', 'no-such-patient')",
    # 5: the full traceback, when asked for
    "SMARTNotebookError.short_traceback = False\nfhir.read('Patient', 'no-such-patient')",
    # 6: the EHR asks for a patient banner: connect() shows it by itself
    "def launch(banner):\n"
    "    return lambda: {'access_token': os.environ['SMART_TEST_TOKEN'],\n"
    "                    'patient': os.environ['SMART_TEST_PATIENT'], 'need_patient_banner': banner}\n"
    "with_banner = connect(os.environ['SMART_TEST_FHIR_BASE'], token_provider=launch(True))",
    # 7: ... and not when it does not
    "without = connect(os.environ['SMART_TEST_FHIR_BASE'], token_provider=launch(False))",
    # 8: sign in again, where the kernel does not know the hub's public address
    "SMARTNotebookError.short_traceback = True\n"
    "def ended_here():\n"
    "    raise ReauthenticationRequired('/hub/oauth_login')\n"
    "connect(os.environ['SMART_TEST_FHIR_BASE'], token_provider=ended_here)",
]


@pytest.fixture(scope="module")
def executed(sandbox: SandboxProcess, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    token = system_token(sandbox)["access_token"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    env_cell = nbformat.v4.new_code_cell(
        "import os\n"
        f"os.environ.update(SMART_TEST_FHIR_BASE={sandbox.iss!r}, "
        f"SMART_TEST_PATIENT={PATIENT!r})"
    )
    nb.cells.insert(0, env_cell)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SMART_TEST_TOKEN", token)
        mp.delenv("JUPYTERHUB_API_URL", raising=False)
        NotebookClient(
            nb,
            timeout=180,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(tmp_path_factory.mktemp("kernel"))}},
        ).execute()
    nb.cells.pop(0)
    return nb, token


def _outputs(nb: Any, index: int) -> list[dict[str, Any]]:
    return list(nb.cells[index].get("outputs", []))


def _error(nb: Any, index: int) -> dict[str, Any]:
    [error] = [o for o in _outputs(nb, index) if o["output_type"] == "error"]
    return dict(error)


def test_a_long_search_shows_a_progress_bar_in_a_notebook(executed: tuple[Any, str]) -> None:
    nb, _ = executed
    assert not [o for o in _outputs(nb, 1) if o["output_type"] == "error"]
    shown = "".join(
        o.get("text", "") + str(o.get("data", {})) for o in _outputs(nb, 1)
    )  # a text bar on stderr, or a widget when ipywidgets is installed
    assert "FHIR search" in shown or "application/vnd.jupyter.widget-view+json" in shown
    count = int(
        next(o for o in _outputs(nb, 1) if o["output_type"] == "execute_result")["data"][
            "text/plain"
        ]
    )
    assert count > 20  # really more than one page
    assert _outputs(nb, 2) == []  # one page: nothing drawn


def test_sign_in_again_is_one_readable_message_with_the_link(executed: tuple[Any, str]) -> None:
    nb, _ = executed
    error = _error(nb, 3)
    assert error["ename"] == "ReauthenticationRequired"
    text = "\n".join(error["traceback"])
    assert len(error["traceback"]) <= 3, text
    assert f"open {LOGIN} in your browser" in text
    assert "line 3: session = connect(" in text  # the researcher's line, not our internals
    assert "tokens.py" not in text and "connect.py" not in text


def test_fhir_errors_are_short_and_the_full_traceback_is_one_switch_away(
    executed: tuple[Any, str],
) -> None:
    nb, token = executed
    short = _error(nb, 4)
    assert short["ename"] == "FHIRError" and len(short["traceback"]) <= 3
    assert "HTTP 404" in "\n".join(short["traceback"])
    full = _error(nb, 5)
    assert full["ename"] == "FHIRError" and len(full["traceback"]) > 3
    assert "http.py" in "\n".join(full["traceback"])
    assert token not in nbformat.writes(nb)


def test_connect_shows_the_patient_banner_when_the_ehr_asks(executed: tuple[Any, str]) -> None:
    nb, _ = executed
    [shown] = [o for o in _outputs(nb, 6) if o["output_type"] == "display_data"]
    html = shown["data"]["text/html"]
    assert "smart-patient-banner" in html and f"Patient/{PATIENT}" in html
    assert "MRN" in html and "Born" in html
    assert _outputs(nb, 7) == []


def test_sign_in_again_by_path_is_an_html_link_the_page_resolves(
    executed: tuple[Any, str],
) -> None:
    """No public URL known: the link is root-relative HTML, so it opens on the hub's address."""
    nb, _ = executed
    error = _error(nb, 8)
    assert error["ename"] == "ReauthenticationRequired"
    assert "open /hub/oauth_login on this JupyterHub's address" in "\n".join(error["traceback"])
    [shown] = [o for o in _outputs(nb, 8) if o["output_type"] == "display_data"]
    assert '<a href="/hub/oauth_login" target="_blank"' in shown["data"]["text/html"]
