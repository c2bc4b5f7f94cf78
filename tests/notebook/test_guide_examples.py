"""The researcher guide's examples of whole records, includes, history, writes and codes
run, in order, against a sandbox of their own (a patient launch with ``patient/*.cruds``).

The blocks between ``<!-- guide-examples:start -->`` and ``<!-- guide-examples:end -->``
in ``docs/researcher-guide.md`` share one namespace whose ``fhir`` is that session's
client, as in a notebook after ``fhir = connect()``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import PUBLIC_CLIENT
from sandbox_process import run_sandbox

from jupyterhub_smart.notebook import connect

from .sandbox_tokens import patient_login

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "researcher-guide.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def guide_blocks() -> list[str]:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("<!-- guide-examples:start -->")
    end = text.index("<!-- guide-examples:end -->")
    return BLOCK.findall(text[start:end])


def test_the_guide_has_examples_for_every_feature() -> None:
    code = "\n".join(guide_blocks())
    for call in ("everything(", "include=", "_has:", "history(", "vread(", "lastn=", "create(",
                 "update(", "patch(", "delete(", "transaction(", "batch(", "lookup(", "expand(",
                 "capabilities"):  # fmt: skip
        assert call in code, call


@pytest.mark.slow
def test_the_guide_examples_run_against_the_sandbox(tmp_path: Path) -> None:
    blocks = guide_blocks()
    with run_sandbox(tmp_path, [PUBLIC_CLIENT], patients=2, seed=7) as sandbox:
        tokens = patient_login(sandbox, scope="launch/patient openid fhirUser patient/*.cruds")
        with connect(sandbox.iss, token_provider=lambda: tokens, progress=False) as fhir:
            namespace = {"fhir": fhir}
            for number, block in enumerate(blocks):
                try:
                    exec(compile(block, f"<guide example {number}>", "exec"), namespace)  # noqa: S102
                except Exception as exc:
                    pytest.fail(
                        f"guide example {number} failed: {type(exc).__name__}: {exc}\n{block}"
                    )
            assert namespace["last"].meta["source"] == "server"
            assert [e.status for e in namespace["result"].entries] == [201, 201]
            assert [i for i, _ in namespace["batch"].failed] == [1]
