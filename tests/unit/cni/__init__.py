"""Unit tests of the CNI plugin package (no agent)."""
