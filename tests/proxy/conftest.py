"""The package's hub in FHIR proxy mode (see :mod:`.world`), shared by its test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .world import ProxyWorld, running_world


@pytest.fixture(scope="package")
def proxy_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyWorld]:
    with running_world(tmp_path_factory.mktemp("proxy-world")) as world:
        yield world
