"""The agent API's body limit: a large valid policy import goes through (64 MiB by default, set
with ``CILIARY_AGENT_API_MAX_BODY``), one over the limit is refused with a message naming the
limit and how to raise it, one the API cannot store (over etcd's per-object request limit) is
refused naming that limit, and a client hanging up mid-request is no internal error."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.agent.server import MAX_BODY_ENV
from ciliary.lab import manager

from .conftest import CILIARY, LAB_TEMPLATE, assert_no_leftovers, unique

LIMIT = 2 << 20


@pytest.fixture(scope="module")
def small_limit_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    lab, node = unique("lim"), unique("n")
    path = tmp_path_factory.mktemp("lim") / "lab.yaml"
    path.write_text(LAB_TEMPLATE.format(lab=lab, node=node, aggregation="medium"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MAX_BODY_ENV, str(LIMIT))  # the agents inherit it (through the supervisor)
        try:
            manager.up(path)
            yield lab, node
        finally:
            if lab in manager.list_labs():
                manager.down(lab)
            assert_no_leftovers(lab, [node])


def _policy(path: Path, size: int) -> Path:
    path.write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
        f"metadata: {{name: big, namespace: shop, annotations: {{note: {'x' * size}}}}}\n"
        "spec:\n  podSelector: {matchLabels: {app: server}}\n  policyTypes: [Ingress]\n"
        "  ingress:\n  - from:\n    - podSelector: {}\n"
    )
    return path


def _import(node: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CILIARY, "--node", node, "policy", "import", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_import_over_one_mib_works_and_over_the_limit_names_it(
    small_limit_lab: tuple[str, str], tmp_path: Path
) -> None:
    _, node = small_limit_lab
    ok = _import(node, _policy(tmp_path / "ok.yaml", 5 << 18))  # 1.25 MiB: over aiohttp's 1 MiB
    assert ok.returncode == 0, ok.stderr
    # under the agent's limit but over what one Kubernetes object may be (etcd's request limit):
    # refused by the API, the message naming that limit; nothing stored, nothing enforced
    stored = _import(node, _policy(tmp_path / "stored.yaml", 7 << 18))  # 1.75 MiB
    assert stored.returncode == 1
    assert "RequestEntityTooLarge" in stored.stderr, stored.stderr
    assert "etcd --max-request-bytes" in stored.stderr, stored.stderr
    big = _import(node, _policy(tmp_path / "big.yaml", 3 << 20))
    assert big.returncode == 1
    lines = big.stderr.strip().splitlines()
    assert len(lines) == 1, big.stderr
    assert f"over the agent API's limit of {LIMIT} bytes" in lines[0]
    assert f"{MAX_BODY_ENV}=<bytes>" in lines[0]


def test_client_hanging_up_mid_request_is_not_an_internal_error(
    small_limit_lab: tuple[str, str],
) -> None:
    lab, node = small_limit_lab
    nrec = next(n for n in manager.record(lab).nodes if n.name == node)
    log = Path(nrec.state_dir) / "agent.log"
    start = log.stat().st_size
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(nrec.socket)
            s.sendall(
                b"PUT /v1/policy HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n" + b'{"text": "' + b"x" * 1000
            )
    time.sleep(1.0)
    with open(log, "rb") as fh:
        fh.seek(start)
        new = fh.read().decode(errors="replace")
    assert "Traceback" not in new and "internal error" not in new, new
    assert new.count("client went away during PUT /v1/policy") == 3, new
