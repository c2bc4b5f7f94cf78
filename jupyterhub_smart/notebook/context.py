"""The SMART launch context as a notebook sees it, and the patient banner.

The context comes with every access token (the hub's token API returns the
current patient, encounter and granted scopes), so it is as fresh as the last
token: after a new EHR launch for another patient, the next token fetch
brings the new patient and ``client.context`` changes with it.

SMART's ``need_patient_banner`` means the EHR does not show which patient the
app is looking at, so the app must: :func:`connect` then displays the banner
by itself. The banner is built with :func:`html.escape` on every value (names
come from the EHR's data and must not be able to inject markup into the
notebook).
"""

from __future__ import annotations

import html
import sys
from dataclasses import dataclass
from typing import Any

from .tokens import TokenInfo

__all__ = ["PatientBanner", "SMARTContext", "display_banner", "in_notebook"]


@dataclass(frozen=True)
class SMARTContext:
    """Who and what this session is about (never holds the access token)."""

    fhir_base_url: str | None
    patient: str | None
    encounter: str | None
    fhir_user: str | None
    scopes: tuple[str, ...]
    need_patient_banner: bool
    smart_style_url: str | None
    expires_at: float | None

    @classmethod
    def from_token(cls, info: TokenInfo, default_base: str | None = None) -> SMARTContext:
        return cls(
            fhir_base_url=info.fhir_base_url or default_base,
            patient=info.patient,
            encounter=info.encounter,
            fhir_user=info.fhir_user,
            scopes=info.scopes,
            need_patient_banner=info.need_patient_banner,
            smart_style_url=info.smart_style_url,
            expires_at=info.expires_at,
        )


@dataclass(frozen=True)
class PatientBanner:
    """Name, birth date, gender and MRN of a Patient; renders as HTML in Jupyter."""

    patient_id: str | None
    name: str | None
    birth_date: str | None
    gender: str | None
    mrn: str | None

    @classmethod
    def from_resource(cls, patient: dict[str, Any]) -> PatientBanner:
        from jupyterhub_smart.views import compile_view
        from jupyterhub_smart.views.builtin import load

        # the banner shows what the Patient table shows: the same built-in view
        view = compile_view(load("Patient"))
        rows = view.rows({**patient, "resourceType": "Patient"})
        row = dict(zip((c.name for c in view.columns), rows[0], strict=True)) if rows else {}
        text = {k: v if isinstance(v, str) and v else None for k, v in row.items()}
        name = " ".join(p for p in (text.get("given"), text.get("family")) if p) or None
        return cls(
            patient_id=text.get("id"),
            name=name,
            birth_date=text.get("birth_date"),
            gender=text.get("gender"),
            mrn=text.get("mrn"),
        )

    def _fields(self) -> list[tuple[str, str]]:
        return [
            ("Born", self.birth_date or "unknown"),
            ("Gender", self.gender or "unknown"),
            ("MRN", self.mrn or "unknown"),
        ]

    def __str__(self) -> str:
        parts = [self.name or "(no name)"] + [f"{k}: {v}" for k, v in self._fields()]
        return " | ".join(parts)

    __repr__ = __str__  # the text/plain form Jupyter shows next to the HTML

    def _repr_html_(self) -> str:
        esc = html.escape
        items = "".join(
            f'<span style="margin-left:1.5em"><span style="opacity:.7">{esc(k)}</span> '
            f"<b>{esc(v)}</b></span>"
            for k, v in self._fields()
        )
        return (
            '<div class="smart-patient-banner" role="banner" style="font-family:sans-serif;'
            "border-left:6px solid #2a6f97;background:#eef5f9;color:#102a43;padding:.5em 1em;"
            'margin:.25em 0">'
            f'<b style="font-size:1.15em">{esc(self.name or "(no name)")}</b>{items}'
            f'<span style="float:right;opacity:.6">Patient/{esc(self.patient_id or "?")}</span>'
            "</div>"
        )


def in_notebook() -> bool:
    """True inside a Jupyter kernel (rich display and tqdm widgets work there)."""
    if "IPython" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython half-installed
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def display_banner(banner: PatientBanner) -> None:
    """Show the banner through IPython's rich display (text outside notebooks)."""
    try:
        from IPython.display import display
    except ImportError:
        print(banner)
        return
    display(banner)
