"""Peak memory of a child interpreter, for tests that bound what one bad input may cost.

``getrusage().ru_maxrss`` is no use here: Linux carries the parent's high-water
mark across ``exec``, so a child started from a large pytest process reports
the parent's size. ``VmHWM`` in ``/proc/self/status`` belongs to the new
process image only.
"""

from __future__ import annotations

#: Source defining ``peak_kb()`` (the process's peak resident memory in KiB), to
#: prepend to a ``python -c`` script.
PEAK_KB = (
    "def peak_kb():\n"
    "    with open('/proc/self/status') as status:\n"
    "        return next(int(l.split()[1]) for l in status if l.startswith('VmHWM:'))\n"
)
