"""The Hubble UI: a namespace's service map and live flows table in the browser, served by a
small backend that reads the Hubble relay (``ciliary hubble ui``; :mod:`.server`)."""

DEFAULT_PORT = 12000
"""Upstream's ``cilium hubble ui`` port."""
