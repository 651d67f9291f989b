"""Errors of the Linux plumbing layer: one-line messages naming the object that failed."""

from __future__ import annotations


class LinkError(Exception):
    """A netns, link, address, route or cgroup operation failed."""


class NetnsNotFoundError(LinkError):
    """The network namespace path does not exist (anymore)."""
