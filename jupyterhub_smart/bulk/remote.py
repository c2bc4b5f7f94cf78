"""``--out s3://bucket/prefix`` (any fsspec URL): export into a local staging directory, then sync it.

Resuming needs files that can be cut back and appended to, which object
stores do not offer; so the export always runs in a local directory (the
staging copy, which keeps ``export.json`` and serves ``--resume``), and each
completed export is mirrored to the remote URL: every file uploaded, and
remote files that the local layout no longer has (Parquet parts rewritten or
dropped by a later run's deletions) removed. The remote copy is a plain
Parquet dataset like the local one. Credentials and endpoints come from the
filesystem's usual configuration (for S3: the AWS environment variables or
profile, ``AWS_ENDPOINT_URL`` for S3-compatible servers) or ``storage_options``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import BulkError
from .state import STATE_FILE


def is_remote(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` is an fsspec URL (``s3://...``) rather than a local path."""
    text = os.fspath(out)
    return "://" in text and not text.startswith("file://")


def default_staging(url: str) -> Path:
    """The local staging directory of a remote output (stable, so ``--resume`` finds it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return Path(base) / "jupyterhub-smart" / "bulk-staging" / digest


def sync(local: Path, url: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """Mirror ``local`` to ``url``; returns the number of files uploaded."""
    try:
        import fsspec
    except ImportError:
        raise BulkError(
            "--out with a URL needs fsspec (pip install 'jupyterhub-smart[bulk]')"
        ) from None
    try:
        fs, root = fsspec.core.url_to_fs(url.rstrip("/"), **dict(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise BulkError(f"--out {url}: {exc}") from None
    files = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("."))
    wanted = {p.relative_to(local).as_posix() for p in files}
    try:
        for path in files:
            relative = path.relative_to(local).as_posix()
            if relative == STATE_FILE:
                continue  # last, so that a remote export.json means a complete copy
            fs.put_file(str(path), f"{root}/{relative}")
        existing = fs.find(root) if fs.exists(root) else []
        prefix = root.rstrip("/") + "/"
        for remote_path in existing:
            if remote_path.startswith(prefix) and remote_path[len(prefix) :] not in wanted:
                fs.rm_file(remote_path)
        fs.put_file(str(local / STATE_FILE), f"{root}/{STATE_FILE}")
    except OSError as exc:
        raise BulkError(f"uploading to {url} failed: {type(exc).__name__}: {exc}") from None
    return len(files)
