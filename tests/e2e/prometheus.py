"""A real Prometheus server for tests: scrape our metrics endpoints and ask PromQL about them.

Why a real one: our exposition has to be what Prometheus itself accepts and stores (names,
types, label escaping, content negotiation), and a dashboard's PromQL has to return what the
dashboard expects; a text parser in the test would agree with our own mistakes.

Debian's ``/usr/bin/prometheus`` (installed by ``scripts/setup.sh``) runs with a generated config
and a temporary TSDB, listening on 127.0.0.1 only — in the root netns, or inside a named
network namespace (``ip netns exec NS``) where a lab node's metrics servers live. Queries go over
the HTTP API from the same namespace (a short child ``python -c`` under ``ip netns exec`` when a
netns is given). The server is stopped by its pid (``ip netns exec`` execs the server, so the pid
is Prometheus itself) and its directory removed, also when the test fails.

    with PrometheusServer(["127.0.0.1:9965"], netns="node-a") as prom:
        prom.wait_for('hubble_flows_processed_total{verdict="DROPPED"}')
        value = prom.value('sum(hubble_drop_total)')
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ciliary.apiserver.etcdserver import free_port

PROMETHEUS = Path("/usr/bin/prometheus")

# Fetches one URL and prints the body; run inside the netns when one is given.
_FETCH = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:\n"
    "    sys.stdout.write(r.read().decode())\n"
)


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error."""


class PrometheusServer:
    """One Prometheus scraping ``targets`` ("host:port", path /metrics) every
    ``scrape_interval``. ``port``: its own listen port on 127.0.0.1 (a free one in the root
    netns when not given; 9090 inside a fresh netns, where nothing else listens)."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        netns: str | None = None,
        port: int | None = None,
        scrape_interval: str = "1s",
        job: str = "ciliary",
        binary: Path = PROMETHEUS,
    ) -> None:
        self.targets = list(targets)
        self.netns = netns
        self.port = port if port is not None else (9090 if netns else free_port())
        self.scrape_interval = scrape_interval
        self.job = job
        self.binary = binary
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns] if self.netns else []

    def _config(self) -> str:
        targets = ", ".join(json.dumps(t) for t in self.targets)
        return (
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            f"  scrape_timeout: {self.scrape_interval}\n"
            "scrape_configs:\n"
            f"  - job_name: {json.dumps(self.job)}\n"
            "    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )

    def start(self, timeout: float = 30.0) -> None:
        if not self.binary.exists():
            raise PrometheusError(f"{self.binary} is not installed (scripts/setup.sh installs it)")
        self.workdir = Path(tempfile.mkdtemp(prefix="ciliary-prometheus-"))
        config = self.workdir / "prometheus.yml"
        config.write_text(self._config())
        log = (self.workdir / "prometheus.log").open("wb")
        try:
            self.proc = subprocess.Popen(
                [
                    *self._prefix(),
                    str(self.binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited ({self.proc.returncode}): {self.log()}")
            try:
                self._get("/-/ready", timeout=1.0)
                return
            except (OSError, subprocess.CalledProcessError) as err:
                if time.monotonic() > deadline:
                    raise PrometheusError(
                        f"prometheus not ready in {timeout}s ({err}): {self.log()}"
                    ) from err
                time.sleep(0.2)

    def log(self) -> str:
        path = self.workdir / "prometheus.log" if self.workdir else None
        return path.read_text(errors="replace")[-2000:] if path and path.exists() else ""

    def _get(self, path: str, timeout: float = 5.0) -> str:
        url = self.url + path
        if self.netns is None:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return str(response.read().decode())
        done = subprocess.run(
            [*self._prefix(), sys.executable, "-c", _FETCH, url, str(timeout)],
            capture_output=True,
            check=True,
            timeout=timeout + 5,
        )
        return done.stdout.decode()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; returns ``data.result`` (vector: [{"metric": {...}, "value":
        [t, "v"]}])."""
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise PrometheusError(f"query {promql!r} failed: {answer}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def wait_for(self, promql: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Polls until the query returns a non-empty result (scrapes take an interval)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                targets = self._get("/api/v1/targets")
                raise PrometheusError(f"no result for {promql!r} in {timeout}s; targets: {targets}")
            time.sleep(0.3)

    def value(self, promql: str, timeout: float = 15.0) -> float:
        """The single sample value of a query (waits for it to appear)."""
        result = self.wait_for(promql, timeout)
        if len(result) != 1:
            raise PrometheusError(f"{promql!r} returned {len(result)} series, expected 1")
        return float(result[0]["value"][1])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> PrometheusServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
