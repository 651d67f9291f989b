"""The flow decoder's caches (endpoint submessages, address text, summaries, TCP flags, UUIDs)
never show stale agent state: every getter is asked per event, so a changed endpoint, identity
or remote pod gives the new values in the very next flow."""

from __future__ import annotations

import uuid
from ipaddress import IPv4Address

from ciliary.agent.flows import EndpointInfo, FlowDecoder, FlowGetters, FlowUUIDs
from ciliary.datapath.maps.endpoints import IPAddress
from ciliary.datapath.maps.events import RawTraceEvent

CLIENT, SERVER, REMOTE = (IPv4Address(a) for a in ("10.0.0.10", "10.0.0.20", "10.0.9.9"))


class Pod:
    def __init__(self, namespace: str, pod_name: str) -> None:
        self.namespace, self.pod_name = namespace, pod_name


def _event(dst: IPAddress = SERVER, dst_sec_id: int = 301, tcp_flags: int = 0x02) -> RawTraceEvent:
    return RawTraceEvent(
        ts_ns=1, ct_created_ns=0, src=CLIENT, dst=dst, smac="02:00:00:00:00:01",
        dmac="02:00:00:00:00:02", sport=40000, dport=80, src_sec_id=300, dst_sec_id=dst_sec_id,
        ifindex=0, pkt_len=74, ep_id=7, dst_ep_id=9, type=4, obs_point=101, verdict=1,
        drop_reason=0, family=2, proto=6, tcp_flags=tcp_flags, is_reply=False, icmp_type=0,
        icmp_code=0, ct_state=0,
    )  # fmt: skip


def _decoder() -> tuple[FlowDecoder, dict[IPAddress, EndpointInfo], dict[int, tuple[str, ...]],
                        dict[IPAddress, Pod], dict[IPAddress, int]]:  # fmt: skip
    eps: dict[IPAddress, EndpointInfo] = {
        CLIENT: EndpointInfo(7, 300, "default", "client"),
        SERVER: EndpointInfo(9, 301, "shop", "server-1", (("server", "Deployment"),)),
    }
    labels: dict[int, tuple[str, ...]] = {
        300: ("k8s:app=client",),
        301: ("k8s:app=server",),
        400: ("k8s:app=remote",),
    }
    pods: dict[IPAddress, Pod] = {REMOTE: Pod("other", "remote-1")}
    ipcache: dict[IPAddress, int] = {REMOTE: 400}
    getters = FlowGetters(
        endpoint_by_ip=eps.get,
        identity_labels=labels.get,
        pod_of_ip=pods.get,
        identity_of_ip=ipcache.get,
    )
    return FlowDecoder("node-a", getters), eps, labels, pods, ipcache


def test_a_changed_endpoint_shows_in_the_next_flow() -> None:
    decoder, eps, _labels, _pods, _ipc = _decoder()
    first = decoder.decode(_event())
    assert (first.destination.pod_name, first.destination.workloads[0].kind) == (
        "server-1",
        "Deployment",
    )
    eps[SERVER] = EndpointInfo(9, 301, "shop", "server-2", (("server", "StatefulSet"),))
    second = decoder.decode(_event())
    assert second.destination.pod_name == "server-2"
    assert [w.kind for w in second.destination.workloads] == ["StatefulSet"]
    del eps[SERVER]  # gone: resolved as a remote address now (identity from the datapath)
    third = decoder.decode(_event())
    assert (third.destination.ID, third.destination.pod_name) == (0, "")
    assert list(third.destination.labels) == ["k8s:app=server"]


def test_changed_identity_labels_show_in_the_next_flow() -> None:
    decoder, _eps, labels, _pods, _ipc = _decoder()
    assert list(decoder.decode(_event()).source.labels) == ["k8s:app=client"]
    labels[300] = ("k8s:app=client", "k8s:tier=front")
    assert list(decoder.decode(_event()).source.labels) == ["k8s:app=client", "k8s:tier=front"]
    del labels[300]
    assert list(decoder.decode(_event()).source.labels) == []


def test_a_changed_remote_pod_or_ipcache_entry_shows_in_the_next_flow() -> None:
    decoder, _eps, labels, pods, ipcache = _decoder()
    flow = decoder.decode(_event(dst=REMOTE, dst_sec_id=0))
    assert (flow.destination.pod_name, flow.destination.identity) == ("remote-1", 400)
    pods[REMOTE] = Pod("other", "remote-2")
    assert decoder.decode(_event(dst=REMOTE, dst_sec_id=0)).destination.pod_name == "remote-2"
    ipcache[REMOTE] = 401
    labels[401] = ("k8s:app=moved",)
    moved = decoder.decode(_event(dst=REMOTE, dst_sec_id=0)).destination
    assert (moved.identity, list(moved.labels)) == (401, ["k8s:app=moved"])


def test_flows_do_not_share_their_submessages() -> None:
    decoder, *_ = _decoder()
    a = decoder.decode(_event(tcp_flags=0x12))
    a.source.labels.append("k8s:changed=yes")
    a.l4.TCP.flags.FIN = True
    b = decoder.decode(_event(tcp_flags=0x12))
    assert list(b.source.labels) == ["k8s:app=client"]
    assert (b.l4.TCP.flags.SYN, b.l4.TCP.flags.ACK, b.l4.TCP.flags.FIN) == (True, True, False)


def test_flow_uuids_are_random_version_4_uuids() -> None:
    ids = FlowUUIDs()
    made = [ids.next() for _ in range(3000)]  # more than one batch read from os.urandom
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
    decoder, *_ = _decoder()
    assert decoder.decode(_event()).uuid != decoder.decode(_event()).uuid
