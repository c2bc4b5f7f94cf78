"""Errors of a bulk export, each with the exit status the CLI returns for it."""

from __future__ import annotations

#: Exit statuses of ``jupyterhub-smart bulk export``.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Everything was saved, but the server reported errors or some data was bad.
EXIT_PARTIAL = 3
#: The ``--timeout`` budget ran out; the server job is kept and ``--resume`` continues it.
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130


class BulkError(Exception):
    """A bulk export that cannot go on; the message says why and what to do."""

    exit_code = EXIT_FAILED


class BudgetExceeded(BulkError):
    """The time budget ran out; the server job stays, resumable with ``--resume``."""

    exit_code = EXIT_TIMEOUT


class Interrupted(BulkError):
    """Stopped by Ctrl-C; the state on disk lets ``--resume`` continue."""

    exit_code = EXIT_INTERRUPTED
