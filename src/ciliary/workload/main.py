"""``ciliary workload ...``: the entry point of the built-in pod workloads.

The CLI exposes :func:`main` as ``ciliary workload``; ``python -m ciliary.workload.main`` runs it
too, which is how tests start servers in subprocesses. Each workload module adds its own
subcommand; they share nothing but :mod:`ciliary.workload.common`.

Only the module of the workload named on the command line is imported (``WORKLOADS``): pods and
the e2e tests start these tools all the time, and the DNS tools' dnspython alone cost ~0.25 s per
start of any workload. Help or an unknown name builds the parser of every module, as before.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import import_module

WORKLOADS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pause", ("pause",)),
    ("http_server", ("http-server",)),
    ("http_get", ("http-get",)),
    ("echo_server", ("echo-server",)),
    ("echo_client", ("tcp-echo", "udp-echo")),
    ("tcp_stream", ("tcp-stream",)),
    ("ping", ("ping",)),
    ("dns", ("dns-server", "dns-query")),
)
"""Each ``ciliary.workload.<module>`` in help order with the subcommands its ``add_parsers``
adds; a test checks these names against the full parser."""


def module_of(word: str) -> str | None:
    """The module adding the workload ``word``, None if no workload is called so."""
    for module, names in WORKLOADS:
        if word in names:
            return module
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every workload's parser, or only those of module ``only`` (imports just that one)."""
    parser = argparse.ArgumentParser(
        prog="ciliary workload",
        description="Built-in workloads for lab pods: servers log one line per request and stop"
        " on SIGTERM; clients exit 0 on success, 1 with a one-line reason on failure.",
    )
    sub = parser.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")
    for module, _names in WORKLOADS:
        if only is None or module == only:
            import_module(f"ciliary.workload.{module}").add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the workload named by ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(module_of(words[0]) if words else None)
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
