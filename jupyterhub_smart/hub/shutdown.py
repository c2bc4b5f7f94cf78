"""Refreshes a stopping hub lets finish: the EHR may already have spent the old refresh token.

On SIGTERM or SIGINT, JupyterHub runs its cleanup, then cancels every task of
its event loop and waits for them to end (``JupyterHub.shutdown_cancel_tasks``).
A refresh cancelled while its request is at the EHR loses the EHR's answer. An
EHR that rotates refresh tokens has spent the old one by then, so the hub's next
refresh would present a spent token and the EHR would revoke the grant
(RFC 9700 4.14): a routine restart would sign the user out of their EHR session.

:class:`FinishBeforeExit` is a task that takes such a cancellation as "finish
soon": it goes on for up to ``grace`` seconds, so that the EHR's answer is
stored (or written to the unsaved-tokens folder, :mod:`.spill`, when the
database is down), and only then is cancelled. Kubernetes sends SIGKILL 30 s
after SIGTERM by default (``terminationGracePeriodSeconds``); the grace must
end before that.

Only a cancellation requested by another task is put off: that is how the
hub's cancel-everything arrives, while callers of a refresh wait for it
through ``asyncio.shield`` and never cancel it. A deadline of the task's own
(``asyncio.timeout``, which the request uses for ``token_timeout``) cancels
from a timer, outside any task, and takes effect at once. So the request runs
in the refresh's own task (Python 3.11 and later; on 3.10 its deadline is a
second task that the hub's cancel-everything reaches, and the refresh is not
kept).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["FinishBeforeExit"]

T = TypeVar("T")


class FinishBeforeExit(asyncio.Task[T]):
    """A task whose cancellation by another task is put off for up to ``grace`` s (see module).

    ``on_put_off`` is called once, when the first cancellation is put off
    (to log that the hub waits). A task that ends within the grace ends as it
    would have: with its result or its exception, not cancelled.
    """

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        grace: float,
        on_put_off: Callable[[], None] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(coro, name=name)
        self._grace = grace
        self._on_put_off = on_put_off
        self._deadline: asyncio.TimerHandle | None = None

    def cancel(self, msg: Any | None = None) -> bool:
        """Another task's request: cancel ``grace`` s later unless the task ends first.

        A request from outside any task (a timer: the task's own deadline) or
        from the task itself takes effect at once.
        """
        if self.done():
            return False
        if asyncio.current_task() in (None, self):
            return super().cancel(msg)
        if self._deadline is None:
            self._deadline = self.get_loop().call_later(self._grace, self._cancel_now, msg)
            self.add_done_callback(self._drop_deadline)
            if self._on_put_off is not None:
                self._on_put_off()
        return True

    def _cancel_now(self, msg: Any | None) -> None:
        super().cancel(msg)

    def _drop_deadline(self, _task: asyncio.Task[T]) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
