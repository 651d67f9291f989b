"""The node agent: endpoints, identities, IPAM and the BPF maps that enforce them, behind a
root-only unix-socket API. ``daemon.py`` only wires the parts together."""
