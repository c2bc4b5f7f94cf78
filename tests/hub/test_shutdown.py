"""FinishBeforeExit: the hub's cancel-everything at a stop waits for a refresh, its own deadline does not."""

from __future__ import annotations

import asyncio

import pytest

from jupyterhub_smart.hub.shutdown import FinishBeforeExit

# asyncio alone: the same on every JupyterHub and hub database (a real hub stopped
# mid-refresh is in test_slow_refresh.py, which runs in both passes).
pytestmark = pytest.mark.one_pass


async def _stop(main: asyncio.Task[object] | None) -> None:
    """What JupyterHub's shutdown does: cancel every other task, then wait for them.

    ``main``: the test's own task, which stands for the event loop (spared).
    """
    others = [t for t in asyncio.all_tasks() if t not in (asyncio.current_task(), main)]
    for task in others:
        task.cancel()
    await asyncio.wait(others)


def test_a_stop_lets_the_task_finish_with_its_result() -> None:
    put_off: list[bool] = []

    async def scenario() -> str:
        async def refresh() -> str:
            await asyncio.sleep(0.2)
            return "stored"

        task = FinishBeforeExit(refresh(), grace=30, on_put_off=lambda: put_off.append(True))
        await asyncio.sleep(0)
        await asyncio.create_task(_stop(asyncio.current_task()))
        return await task

    assert asyncio.run(scenario()) == "stored"
    assert put_off == [True]


def test_the_grace_ends_in_a_cancellation() -> None:
    async def scenario() -> None:
        task = FinishBeforeExit(asyncio.sleep(60), grace=0.1)
        await asyncio.sleep(0)
        await asyncio.create_task(_stop(asyncio.current_task()))
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scenario())


def test_the_tasks_own_deadline_is_not_put_off() -> None:
    async def scenario() -> None:
        async def request() -> None:
            async with asyncio.timeout(0.1):
                await asyncio.sleep(60)

        task = FinishBeforeExit(request(), grace=60)
        await asyncio.sleep(0)
        await asyncio.create_task(_stop(asyncio.current_task()))  # put off, then the deadline
        await task

    with pytest.raises(TimeoutError):
        asyncio.run(scenario())
