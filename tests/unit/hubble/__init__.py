"""Unit tests of ciliary.hubble."""
