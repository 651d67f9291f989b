"""Unit tests of ciliary.k8s."""
