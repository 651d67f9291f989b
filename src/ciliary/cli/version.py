"""``ciliary version``: the client's version and, when one is reachable, the agent's.

Like ``cilium-dbg version`` it prints both sides, because the question it answers is usually
"are the CLI and the running agent the same build?"; an unreachable agent is reported, not fatal.
"""

from __future__ import annotations

import argparse
import platform

from ciliary import __version__
from ciliary.cli.output import (
    Context,
    Subparsers,
    add_node_flag,
    add_output_flag,
    print_json,
    wants_json,
)
from ciliary.client import AgentClientError

AGENT_TIMEOUT = 3.0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("version", help="print the client and agent versions")
    add_node_flag(p)
    add_output_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    daemon: str | None = None
    node: str | None = None
    error: str | None = None
    try:
        with ctx.client(timeout=AGENT_TIMEOUT) as client:
            st = client.status()
        daemon, node = st.version, st.node
    except AgentClientError as exc:
        error = str(exc)
    python = platform.python_version()
    if wants_json(args):
        print_json(
            {
                "client": __version__,
                "python": python,
                "daemon": daemon,
                "node": node,
                "error": error,
            }
        )
        return 0
    ctx.console.print(f"Client: ciliary {__version__} (Python {python})")
    if daemon is not None:
        ctx.console.print(f"Daemon: ciliary {daemon} (node {node})")
    else:
        ctx.console.print(f"Daemon: unavailable ({error})")
    return 0
