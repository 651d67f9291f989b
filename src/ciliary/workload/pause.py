"""``pause``: do nothing until stopped, like Kubernetes' pause container.

A pod that only needs to exist (a client that the tests exec into, a target for ping) runs this:
it keeps the pod's processes alive at no cost and exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse

from ciliary.workload.common import serve_until_signal


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("pause", help="sleep until SIGTERM or SIGINT, then exit 0")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return serve_until_signal([], "pause", ready=["pause: waiting for SIGTERM or SIGINT"])
