"""The ``jupyterhub-smart`` command.

Each sub-command lives beside the code it drives, in a module that exposes
``register(subparsers)``; this file assembles them and holds the argument
types they share (ports, counts). Registration modules
import nothing heavy at import time, so ``jupyterhub-smart --help`` stays fast
and works without the optional extras (``[sandbox]``, ``[notebook]``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse type of a count or a duration: a whole number, at least 1."""
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type of an optional count: a whole number, 0 or more."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def non_negative_float(text: str) -> float:
    """argparse type of an optional amount (seconds, a rate): a number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def tcp_port(text: str) -> int:
    """argparse type of a TCP port to listen on: 1 to 65535."""
    value = _whole_number(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return value


def missing_extra(extra: str, modules: Sequence[str]) -> str | None:
    """What to install, in one line, when ``modules`` of ``extra`` are missing; else None.

    Sub-commands whose servers come from an optional extra check before doing
    anything, so that a hub-only install answers ``jupyterhub-smart sandbox``
    with the ``pip install`` to run rather than a traceback.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"missing {', '.join(missing)}; install with: pip install 'jupyterhub-smart[{extra}]'"


#: Modules that add sub-commands. Each defines ``register(subparsers) -> None`` and
#: sets ``func`` (``Callable[[argparse.Namespace], int]``) on its parser's defaults.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "jupyterhub_smart.sandbox.cli",
    "jupyterhub_smart.demo",
    "jupyterhub_smart.smart.keys_cli",
    "jupyterhub_smart.audit.cli",
    "jupyterhub_smart.views.cli",
    "jupyterhub_smart.bulk.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="jupyterhub-smart",
        description="SMART on FHIR for JupyterHub: sandbox EHR, demo, keys and audit tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
