"""Sandboxes with a Backend Services client for the bulk export client's tests.

Each test that needs its own server behaviour (faults, short tokens) starts a
sandbox with :func:`bulk_sandbox`; ``sandbox_env`` is one shared, fault-free
sandbox per package. The client's keys are made with the core's key tools
(ES384 and RS384), and registered as the client's JWKS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sandbox_process import SandboxProcess, run_sandbox

from jupyterhub_smart.smart.keys import write_key_pair

CLIENT_ID = "bulk-backend"
SMALL_FILES = ["--bulk-file-resources", "60", "--bulk-job-seconds", "0.3"]


@dataclass
class BulkEnv:
    """A running sandbox and what a client needs to export from it."""

    sandbox: SandboxProcess
    key: Path
    rs_key: Path
    lock_dir: Path

    @property
    def fhir_url(self) -> str:
        return self.sandbox.fhir_base_url

    def cli(self, out: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``jupyterhub-smart bulk export`` against this sandbox."""
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "jupyterhub_smart",
                "bulk",
                "export",
                *self.cli_args(out),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_args(self, out: Path) -> list[str]:
        return [
            "--fhir-url", self.fhir_url, "--client-id", CLIENT_ID, "--key", str(self.key),
            "--out", str(out), "--lock-dir", str(self.lock_dir),
        ]  # fmt: skip

    def api_args(self, out: Path) -> dict[str, Any]:
        return {
            "fhir_url": self.fhir_url,
            "client_id": CLIENT_ID,
            "key": self.key,
            "out": out,
            "lock_dir": self.lock_dir,
        }


@pytest.fixture(scope="package")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("bulk-keys")
    es_key, jwks_path = write_key_pair("ES384", folder)
    rs_key, jwks_path = write_key_pair("RS384", folder, rsa_bits=2048)
    return es_key, rs_key, json.loads(jwks_path.read_text())


@contextmanager
def bulk_sandbox(
    workdir: Path,
    keys: tuple[Path, Path, dict[str, Any]],
    extra_args: Sequence[str] = (),
    *,
    patients: int = 6,
    scope: str = "system/*.rs",
    other_clients: Sequence[dict[str, Any]] = (),
) -> Iterator[BulkEnv]:
    """A sandbox with the Backend Services client registered, small files and quick jobs."""
    es_key, rs_key, jwks = keys
    client = {
        "client_id": CLIENT_ID,
        "type": "confidential-asymmetric",
        "jwks": jwks,
        "scope": scope,
    }
    with run_sandbox(
        workdir,
        [client, *other_clients],
        patients=patients,
        seed=5,
        extra_args=[*SMALL_FILES, *extra_args],
    ) as process:
        yield BulkEnv(process, es_key, rs_key, workdir / "locks")


@pytest.fixture(scope="package")
def sandbox_env(
    tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path, dict[str, Any]]
) -> Iterator[BulkEnv]:
    with bulk_sandbox(
        tmp_path_factory.mktemp("bulk-sandbox"), keys, ["--bulk-deleted-observations", "3"]
    ) as env:
        yield env
