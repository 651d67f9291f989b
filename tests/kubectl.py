"""Running the real ``kubectl`` against a kubeconfig in tests, and waiting for what it reports.

One home for it: the API server's integration tests (a control plane from tests/controlplane.py)
and the e2e lab tests (a lab's admin kubeconfig, see tests/e2e/conftest.py ``kube_lab``) all drive
the cluster the way a user does, through this wrapper; a failed command fails the test with its
arguments and output, never silently.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

KUBECTL = "/usr/bin/kubectl"

T = TypeVar("T")


def kubectl_run(
    kubeconfig: str | Path,
    *args: str,
    check: bool = True,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``kubectl --kubeconfig KUBECONFIG ARGS``; with ``check`` a non-zero exit fails the test."""
    result = subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        input=stdin,
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def kubectl(kubeconfig: str | Path, *args: str, stdin: str | None = None) -> str:
    """The stdout of a ``kubectl`` command that must succeed."""
    return kubectl_run(kubeconfig, *args, stdin=stdin).stdout


def get_json(kubeconfig: str | Path, *args: str) -> dict[str, Any]:
    """``kubectl get ARGS -o json``, parsed."""
    out: dict[str, Any] = json.loads(kubectl(kubeconfig, "get", *args, "-o", "json"))
    return out


def pods(kubeconfig: str | Path, selector: str) -> list[dict[str, Any]]:
    """The pods (all namespaces of the kubeconfig's default) matching a label selector."""
    items: list[dict[str, Any]] = get_json(kubeconfig, "pods", "-l", selector)["items"]
    return items


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60, interval: float = 0.2
) -> T:
    """The first truthy result of ``probe``, polled every ``interval`` s; fails naming ``what``
    after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
