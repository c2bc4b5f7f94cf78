"""Child process for the crash test: writes events as fast as it can, from threads
and asyncio tasks, and prints ``seq name`` for each event *after* record returned."""

from __future__ import annotations

import asyncio
import sys
import threading

from jupyterhub_smart.audit import AuditLog, hub_event

path, run = sys.argv[1], sys.argv[2]
log = AuditLog(path, max_bytes=16 * 1024)
out_lock = threading.Lock()


def ack(seq: int, name: str) -> None:
    with out_lock:
        sys.stdout.write(f"{seq} {name}\n")
        sys.stdout.flush()


def thread_writer(n: int) -> None:
    i = 0
    while True:
        name = f"r{run}-t{n}-{i}"
        ack(log.record_sync(hub_event("token-issued", username=name)), name)
        i += 1


async def task_writer(n: int) -> None:
    i = 0
    while True:
        name = f"r{run}-a{n}-{i}"
        ack(await log.record(hub_event("data-access", username=name)), name)
        i += 1


async def main() -> None:
    await asyncio.gather(*(task_writer(n) for n in range(4)))


for n in range(3):
    threading.Thread(target=thread_writer, args=(n,), daemon=True).start()
asyncio.run(main())
