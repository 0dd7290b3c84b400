"""`amoebasearch <verb>`: thin shells over library functions. Only this package parses arguments,
prints, and chooses files; every verb's work is a library call a notebook can make too.
"""

from __future__ import annotations

import argparse
import sys

from amoebasearch.cli import eval, export, find, info, plan, plot, profile, train
from amoebasearch.errors import INTERRUPTED, UsageError, first_line

VERBS = (info, plan, train, profile, find, eval, export, plot)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and pointing at --help."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("argument --") and message.endswith(": expected one argument"):
            # also what `--budget -5ms` gets: argparse reads a value that starts with '-' as an option
            option = message.removeprefix("argument ").split(":")[0].split("/")[0]
            message += f" (a value that starts with '-' is written {option}=VALUE)"
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="amoebasearch",
        description="One LLM, any shape: plan, train, profile and search subnets per device and budget.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    verbs.required = True
    for verb in VERBS:
        verb.register(verbs)
    return parser


def path_problem(err: OSError) -> str:
    """One line for a file-system error: which path, what is wrong with it, what to do instead."""
    where = f"{err.filename}" if err.filename else "a path"
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename:
        return f"cannot create {where}: a file stands where a folder is needed; choose a path not under a file"
    if isinstance(err, IsADirectoryError):
        return f"{where} is a directory: pass a file path"
    if isinstance(err, PermissionError):
        return f"{where}: permission denied: choose a path you can read and write"
    detail = err.strerror or first_line(err)
    return f"{where}: {detail}: check the path"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the verbs' parsers are built: nothing has started
        print("amoebasearch: interrupted", file=sys.stderr)
        return INTERRUPTED
    try:
        return args.run(args) or 0
    except UsageError as err:
        print(f"amoebasearch {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the user chose cannot be read or written as asked
        print(f"amoebasearch {args.verb}: error: {path_problem(err)}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as err:  # a readers' last resort; the common inputs name their file
        print(
            f"amoebasearch {args.verb}: error: an input file is not UTF-8 text ({err}): pass a text/JSON file",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"amoebasearch {args.verb}: interrupted; finished work is kept", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
