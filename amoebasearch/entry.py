"""The ``amoebasearch`` command: `cli.main` behind an import that Ctrl-C may interrupt.

Importing the verbs takes about two seconds (torch); a Ctrl-C in that window would otherwise
print a traceback instead of the one line every later interruption gets.
"""

from __future__ import annotations

import sys

from amoebasearch.errors import INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    try:
        from amoebasearch.cli import main as run_cli
    except KeyboardInterrupt:
        print("amoebasearch: interrupted", file=sys.stderr)
        return INTERRUPTED
    return run_cli(argv)
