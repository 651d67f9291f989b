"""Fixtures: real etcd and a whole control plane per test (``tests/controlplane.py``)."""

from tests.controlplane import control_plane, etcd

__all__ = ["control_plane", "etcd"]
