"""Pausing the cyclic garbage collector while resources become rows.

Turning 100,000 resources into rows allocates millions of container objects
and none of them form cycles; CPython would run its full collections over the
growing heap again and again (a quarter to half of the CPU time). Reference
counting still frees everything as usual; the collector is back on afterwards
(if it was on). Only code that returns quickly runs inside: never a ``yield``
to the caller.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic GC for the block; restore its previous state after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
