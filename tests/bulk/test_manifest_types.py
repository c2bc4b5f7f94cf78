"""A manifest's resource types follow the shared FHIR rule before they name files and folders."""

from __future__ import annotations

import pytest

from jupyterhub_smart.bulk.errors import BulkError
from jupyterhub_smart.bulk.manifest import files_of

FHIR = "https://ehr.example.org/fhir"


def manifest(resource_type: str) -> list[dict[str, object]]:
    return [{"output": [{"type": resource_type, "url": f"{FHIR}/files/1.ndjson"}]}]


def test_a_resource_type_is_accepted() -> None:
    (file,) = files_of(manifest("MedicationRequest"), FHIR, frozenset())
    assert (file.key, file.type) == ("output:MedicationRequest:1", "MedicationRequest")


@pytest.mark.parametrize("resource_type", ["Observation2", "observation", "Obsérvation", "O", ""])
def test_a_name_that_is_no_resource_type_is_refused(resource_type: str) -> None:
    with pytest.raises(BulkError, match="invalid resource type"):
        files_of(manifest(resource_type), FHIR, frozenset())
