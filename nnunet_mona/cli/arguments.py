"""What every ``nnUNetv2_mona_*`` command shares: its parser, and how it ends on a known error.

A command's own errors (an exception class it raises for bad input: a missing folder, a refused option, ...) end
it with ``ERROR: <message>`` on stderr and exit status 1, no traceback; Ctrl-C ends it with status 130 and a hint
that re-running continues where it stopped (every long command here resumes).
"""
import argparse
import sys
from typing import Callable, Sequence, Tuple, Type


def command_parser(prog: str, description: str, **options) -> argparse.ArgumentParser:
    """The parser of command ``prog`` (its name as installed, shown in usage and errors); ``options`` go to
    ``argparse.ArgumentParser`` (e.g. ``formatter_class``)."""
    return argparse.ArgumentParser(prog=prog, description=description, **options)


def run_command(main: Callable[[], int], known_errors: Tuple[Type[BaseException], ...],
                interrupted_hint: str = "Run the same command again to continue where it stopped.") -> None:
    """``sys.exit(main())`` (a return value that is not an int exits 0); an exception of ``known_errors`` prints ``ERROR: ...`` and exits 1, Ctrl-C exits 130."""
    try:
        code = main()
    except known_errors as e:
        print(f"\nERROR: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"\nInterrupted. {interrupted_hint}", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def argv_or_sys(argv: Sequence[str] = None):
    """``argv`` as a list, or the process's own arguments."""
    return sys.argv[1:] if argv is None else list(argv)
