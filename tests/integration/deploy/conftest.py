"""Fixtures: a whole control plane per test (``tests/controlplane.py``)."""

from tests.controlplane import control_plane

__all__ = ["control_plane"]
