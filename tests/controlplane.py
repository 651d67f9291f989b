"""Shared fixtures: a real etcd member per test (data in the test's tmp dir), and a whole control
plane (etcd + ``ciliary-apiserver`` over TLS with the lab CA's certificates and a kubeconfig),
each stopped by pid and its etcd data removed in a ``finally`` whatever the test did.

A conftest imports the fixtures it needs from here (``from tests.controlplane import …``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciliary.apiserver.etcdserver import EtcdProcess, start_etcd
from ciliary.lab.controlplane import ControlPlane, start_control_plane, stop_control_plane


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    proc = start_etcd(tmp_path / "etcd")
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(proc.data_dir, ignore_errors=True)  # 64 MB of preallocated WAL


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    cp = start_control_plane(tmp_path / "lab", bookmark_interval=1.0)
    try:
        yield cp
    finally:
        stop_control_plane(cp)
        shutil.rmtree(cp.etcd.data_dir, ignore_errors=True)
