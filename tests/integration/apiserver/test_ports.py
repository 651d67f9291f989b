"""The control plane's ports: chosen where no outgoing connection can take them, and a port taken
anyway between its choice and the server's bind is a start on fresh ports, not a failed lab (a CI
run once lost ``lab up`` to an ephemeral port an outgoing connection had taken)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.apiserver.etcdserver import free_port, is_bind_race
from ciliary.lab import controlplane
from ciliary.lab.controlplane import start_control_plane, stop_control_plane, wait_ready


def test_free_ports_are_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(50)}
    assert all(1024 < p < low for p in ports)
    assert len(ports) > 40  # spread, not one port handed to every caller


def test_bind_race_is_recognised_only_for_a_taken_address() -> None:
    assert is_bind_race(OSError(98, "error while attempting to bind: address already in use"))
    assert not is_bind_race(RuntimeError("ciliary-apiserver exited: ModuleNotFoundError"))


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s
    finally:
        s.close()


def test_a_port_taken_before_the_api_server_binds_is_a_start_on_other_ports(
    tmp_path: Path, taken: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken_port = taken.getsockname()[1]
    handed: list[int] = []

    def first_api_port_taken() -> int:
        # etcd's client and peer ports, then the API server's: the first API server port is
        # the one a listener already holds
        port = taken_port if len(handed) == 2 else free_port()
        handed.append(port)
        return port

    monkeypatch.setattr(controlplane, "free_port", first_api_port_taken)
    cp = start_control_plane(tmp_path / "lab", bookmark_interval=1.0)
    try:
        assert len(handed) == 6  # two attempts of three ports
        assert cp.port not in (taken_port, 0)
        wait_ready(cp)
    finally:
        stop_control_plane(cp)
        shutil.rmtree(cp.etcd.data_dir, ignore_errors=True)
