"""Small helpers shared by the audit tests (no fakes: real files, real processes)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from jupyterhub_smart.audit import hub_event


def event(i: int = 0, action: str = "login-succeeded") -> dict:
    return hub_event(
        action,
        username=f"user{i}",
        fhir_user=f"Practitioner/{i}",
        patient=f"Patient/p{i}",
        issuer="http://127.0.0.1:9/fhir",
        scopes_granted=["openid", "fhirUser", "launch", "patient/*.rs"],
        client_address="127.0.0.1",
        user_agent="pytest",
    )


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in lines(path)]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for a condition (a deadline against hangs, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def can_mount() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(where: Path, size: str = "64k") -> Iterator[Path]:
    """A tiny real filesystem that really runs out of space (needs root)."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def fill(directory: Path) -> Path:
    """Fill the filesystem holding ``directory`` until writes fail with ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"x" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler
