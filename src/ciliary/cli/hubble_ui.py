"""``ciliary hubble ui``: serves the Hubble UI (:mod:`ciliary.hubble.ui`) for a relay.

Upstream's ``cilium hubble ui`` port-forwards to the hubble-ui pod on port 12000; ours runs the
UI's backend right here, a client of the relay only: ``--relay`` (default: ``$HUBBLE_SERVER``,
else the running lab's relay, as ``hubble observe`` chooses; a lab's TLS relay is dialed with the
lab's client certificate). The policy view reads the cluster's policies and pods from its
Kubernetes API: ``--kubeconfig`` (default: the lab's, when the relay is a lab's). It listens on
loopback and runs until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from ciliary.cli.hubble_dial import default_server, duration_arg, lab_kubeconfig_of, lab_tls_of
from ciliary.cli.output import CLIError, Context, Subparsers
from ciliary.hubble.client import parse_server
from ciliary.hubble.ui import DEFAULT_PORT


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f'invalid port "{text}": expected 0..65535')
    return int(text)


def register_ui(hsub: Subparsers) -> None:
    p = hsub.add_parser(
        "ui",
        help="serve the Hubble UI (service map and flows) for the relay",
        description="Serve the Hubble UI: a namespace's service map and live flows table, "
        "read from the Hubble relay.",
    )
    p.add_argument(
        "--relay",
        default=None,
        metavar="ADDR",
        help="the relay: unix:///path, host:port or tls://host:port (default: $HUBBLE_SERVER, "
        "else the running lab's relay)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"local port to serve the UI on (default {DEFAULT_PORT}; 0: any free port)",
    )
    p.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="PATH",
        help="the cluster's Kubernetes API, read for the policy view (default: the lab's, when "
        "the relay is a lab's)",
    )
    p.add_argument(
        "--timeout",
        type=duration_arg,
        default=duration_arg("5s"),
        metavar="DURATION",
        help="how long to wait for the relay to answer at start (default 5s)",
    )
    p.set_defaults(func=run_ui)


def run_ui(args: argparse.Namespace, ctx: Context) -> int:
    from ciliary.hubble.ui.server import UIError, serve  # noqa: PLC0415 - aiohttp: load when used

    relay = args.relay or default_server()
    try:
        addr = parse_server(relay)
    except ValueError as err:
        raise CLIError(str(err)) from err
    tls = lab_tls_of(relay) if addr.tls else None
    kubeconfig = args.kubeconfig or lab_kubeconfig_of(relay)
    if kubeconfig is not None and not kubeconfig.is_file():
        raise CLIError(f"--kubeconfig {kubeconfig}: no such file")
    try:
        asyncio.run(
            serve(str(addr), tls, port=args.port, dial_timeout=args.timeout, kubeconfig=kubeconfig)
        )
    except UIError as err:
        raise CLIError(str(err)) from err
    except KeyboardInterrupt:
        return 0
    return 0
