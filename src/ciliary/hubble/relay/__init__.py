"""Hubble Relay: one ``observer.Observer`` for the whole cluster, made of every node's.

The relay learns the nodes from a node's ``peer.Peer`` service (or a static list), keeps one
channel per node (:mod:`.pool`), fans every request out and merges the answers in time order
(:mod:`.observer`, :mod:`.fanout`, :mod:`.merge`), and serves the result with gRPC health
(:mod:`.server`); :mod:`.cmd` is the ``ciliary hubble relay`` process. A node that cannot be
reached is reported in the answers (NodeStatusEvent, ServerStatus, GetNodes), never fatal to
the relay.
"""

from ciliary.hubble.relay.cmd import main
from ciliary.hubble.relay.server import RelayConfig, RelayServer

__all__ = ["RelayConfig", "RelayServer", "main"]
