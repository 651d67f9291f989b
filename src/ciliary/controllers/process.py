"""What every controller process shares: its command line, logging, one API client, and a clean
stop.

``ciliary-controller-manager`` and ``ciliary-operator`` are the same kind of process: an asyncio
loop that is only a client of the API server (``--kubeconfig``, or the pod's service account),
holds no state of its own (a restart lists everything again) and exits 0 on SIGTERM or SIGINT
after its work is cancelled and its connections are closed. Each supplies only its flags and
its body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from signal import SIGINT, SIGTERM

from ciliary.kube.client import KubeClient

Body = Callable[[KubeClient, asyncio.Event], Awaitable[None]]
"""Runs until the event is set (a signal), then cancels what it started and returns."""


def parse_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """``parser``'s own flags plus ``--kubeconfig`` and ``--v``; logging configured from them."""
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig of the API server (default: the pod's service account)",
    )
    parser.add_argument("--v", type=int, default=0, help="log verbosity (0: info, 2+: debug)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.v >= 2 else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return args


async def serve(kubeconfig: Path | None, body: Body) -> None:
    """Connect, run ``body`` until SIGTERM/SIGINT, close the client."""
    kube = await KubeClient.connect(kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (SIGTERM, SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await body(kube, stop)
    finally:
        await kube.close()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0.25)  # let TLS transports finish closing


async def cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them to finish."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
