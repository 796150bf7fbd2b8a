"""Command line: ``python -m bytemark_simulator --host 127.0.0.1 --port 8917 --seed 1 [--user 42:TOKEN]``.

The first line on stdout is the bound base URL (useful with ``--port 0``); one log line per request goes
to stderr, never with a token. SIGTERM and SIGINT stop it cleanly. ``--envelope-style`` and
``--compress-answers`` set the server-wide envelope variant and gzip switch (the admin API can change
both, per user too); faults are injected through ``POST /__admin/faults`` (see ``--list-faults``).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from .server import SimulatorServer
from .state import ENVELOPE_STYLES, FAULT_HELP, FAULT_VARIANTS


def _user_spec(text: str) -> tuple[int, str]:
    user_id, sep, token = text.partition(":")
    if not sep or not token or not user_id.lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"expected USER_ID:TOKEN, got {text!r}")
    return int(user_id), token


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m bytemark_simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8917, help="port to bind; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=1, help="seed for generated passes and fault rates")
    parser.add_argument("--timezone", default="America/Chicago", help="agency time zone for day passes")
    parser.add_argument("--now", default=None, help="freeze the clock at this ISO-8601 instant")
    parser.add_argument(
        "--user",
        type=_user_spec,
        action="append",
        default=[],
        metavar="USER_ID:TOKEN",
        help="pre-seed a user (repeatable)",
    )
    parser.add_argument("--current", type=int, default=3, help="current passes per pre-seeded user")
    parser.add_argument("--expired", type=int, default=2, help="expired passes per pre-seeded user")
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    parser.add_argument(
        "--envelope-style",
        choices=ENVELOPE_STYLES,
        default="spec",
        help="server-wide page envelope variant (default spec)",
    )
    parser.add_argument(
        "--compress-answers",
        action="store_true",
        help="gzip normal pages for clients sending Accept-Encoding: gzip",
    )
    parser.add_argument("--list-faults", action="store_true", help="print the fault kinds and exit")
    return parser.parse_args(argv)


def fault_listing() -> str:
    """One line per fault kind: what it does and its variants."""
    lines = []
    for kind, help_text in FAULT_HELP.items():
        variants = FAULT_VARIANTS.get(kind)
        suffix = f" [{', '.join(variants)}]" if variants else ""
        lines.append(f"{kind:<24}{help_text}{suffix}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT."""
    args = parse_args(argv)
    if args.list_faults:
        print(fault_listing())
        return 0
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s bytemark-simulator %(message)s",
    )
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    server = SimulatorServer(
        host=args.host,
        port=args.port,
        seed=args.seed,
        timezone=args.timezone,
        now=args.now,
        envelope_style=args.envelope_style,
        compress_answers=args.compress_answers,
    )
    try:
        server.start()
    except OSError as exc:
        print(f"bytemark simulator: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    try:
        for user_id, token in args.user:
            server.state.seed_user(user_id, token, current=args.current, expired=args.expired)
        print(server.url, flush=True)
        # Event.wait with a timeout keeps the main thread responsive to signals.
        while not stop_requested.wait(0.5):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
