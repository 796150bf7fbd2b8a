"""``bytemark-cache`` (or ``python -m bytemark_cache_ops``): the operator CLI (see ``cli``)."""

from __future__ import annotations

import os
import sys

from bytemark_cache_ops.cli import main


def run() -> None:
    """Run the CLI and exit with its code; a closed pipe (``| head``) ends it quietly."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit: point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    run()
