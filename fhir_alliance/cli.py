"""The ``fhir-alliance`` command: one entry point, subcommands registered by modules and plugins.

The library's own subcommands (``map``, ``decide``, ``check``) live beside the code they drive.
Other distributions (the sync service) add theirs through the ``fhir_alliance.commands`` entry-point
group, the way Flask discovers ``flask.commands``: each entry point names a callable
``register(subparsers)`` that adds one or more sub-parsers and sets ``handler`` on them.
A handler takes the parsed ``argparse.Namespace`` and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from fhir_alliance.errors import FhirAllianceError

__all__ = ["ENTRY_POINT_GROUP", "build_parser", "main"]

ENTRY_POINT_GROUP = "fhir_alliance.commands"

#: Subcommands that ship with the library, as ``module:function`` registering them.
_BUILTIN_COMMANDS = (
    "fhir_alliance.mapping.cli:register",
    "fhir_alliance.consent.cli:register",
    "fhir_alliance.check:register",
)

Register = Callable[[Any], None]


def _load(target: str) -> Register:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    register: Register = getattr(module, attr)
    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhir-alliance",
        description="Therapeutic-alliance measures and consents over FHIR.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for target in _BUILTIN_COMMANDS:
        try:
            register = _load(target)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the others
            if exc.name and target.startswith(exc.name):
                continue
            raise
        register(subparsers)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = handler(args)
    except FhirAllianceError as exc:
        # Messages of our errors never carry patient data; issues carry field paths.
        lines = [f"{issue.path or '(root)'}: {issue.message}" for issue in exc.issues]
        if len(lines) > 1 and all(line in exc.message for line in lines):
            # An InputError's message lists its issues on one line: one per line reads better.
            print(f"error: invalid input at {len(lines)} places", file=sys.stderr)
        else:
            print(f"error: {exc.message}", file=sys.stderr)
        for line in lines:
            if len(lines) > 1 or line not in exc.message:
                print(f"  {line}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
