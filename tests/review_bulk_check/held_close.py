"""``fhir-alliance`` with ``FhirClient.close`` held open, for tests: the close says "closing the
client" on stderr and waits for a line on stdin before it closes, so that a test can send a
signal while ``check`` closes its client. Run as ``python -m tests.review_bulk_check.held_close
check ...`` from the repository root."""

from __future__ import annotations

import sys

from fhir_alliance import cli
from fhir_alliance.client import FhirClient

_close = FhirClient.close


def _held_close(self: FhirClient) -> None:
    print("closing the client", file=sys.stderr, flush=True)
    sys.stdin.readline()
    _close(self)


if __name__ == "__main__":
    FhirClient.close = _held_close  # type: ignore[method-assign]
    raise SystemExit(cli.main(sys.argv[1:]))
