"""``ciliary workload ...``: the entry point of the built-in pod workloads.

The CLI exposes :func:`main` as ``ciliary workload``; ``python -m ciliary.workload.main`` runs it
too, which is how tests start servers in subprocesses. Each workload module adds its own
subcommand; they share nothing but :mod:`ciliary.workload.common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ciliary.workload import (
    dns,
    echo_client,
    echo_server,
    http_get,
    http_server,
    pause,
    ping,
    tcp_stream,
)

_MODULES = (pause, http_server, http_get, echo_server, echo_client, tcp_stream, ping, dns)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ciliary workload",
        description="Built-in workloads for lab pods: servers log one line per request and stop"
        " on SIGTERM; clients exit 0 on success, 1 with a one-line reason on failure.",
    )
    sub = parser.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")
    for module in _MODULES:
        module.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the workload named by ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
