"""The ``jupyterhub-smart`` command.

Each sub-command lives beside the code it drives, in a module that exposes
``register(subparsers)``; this file only assembles them. Registration modules
import nothing heavy at import time, so ``jupyterhub-smart --help`` stays fast
and works without the optional extras (``[sandbox]``, ``[notebook]``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Modules that add sub-commands. Each defines ``register(subparsers) -> None`` and
#: sets ``func`` (``Callable[[argparse.Namespace], int]``) on its parser's defaults.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "jupyterhub_smart.sandbox.cli",
    "jupyterhub_smart.demo",
    "jupyterhub_smart.smart.keys_cli",
    "jupyterhub_smart.audit.cli",
    "jupyterhub_smart.views.cli",
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
