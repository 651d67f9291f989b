"""ciliary: Cilium's networking, observability and security, in Python over a real eBPF datapath."""

__version__ = "0.1.0"
