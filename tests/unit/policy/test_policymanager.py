"""The agent's policy manager without a kernel: egress named ports fed from the pods it knows,
the endpoints to regenerate when they change, and the selector cache shrinking after a delete."""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest

from ciliary.agent import policymanager as module
from ciliary.agent.policymanager import PolicyManager
from ciliary.core.models import BackendInfo, Endpoint, EndpointState, ServiceInfo
from ciliary.core.proxyports import HTTP_EGRESS, ProxyPorts
from ciliary.datapath.maps.policy import PolicyChange
from ciliary.policy.fqdn import DNSLookup

NS = "k8s:io.kubernetes.pod.namespace=default"
LABELS = {
    256: ("k8s:app=client", NS),
    257: ("k8s:app=server", "k8s:instance=a", NS),
    258: ("k8s:app=server", "k8s:instance=b", NS),
    259: ("k8s:app=db", NS),
}

POLICIES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: web}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
"""


class _Map:
    """An endpoint's policy map: its entries and the calls that wrote them."""

    def __init__(self) -> None:
        self.entries: dict[Any, Any] = {}
        self.calls: list[str] = []
        self.fail = False

    def apply(self, desired: Any) -> tuple[int, int]:
        self.calls.append("apply")  # reads the map back, then writes the difference
        self.entries = dict(desired)
        return (len(desired), 0)

    def write(self, change: PolicyChange) -> tuple[int, int]:
        self.calls.append("write")  # the difference only, without reading the map
        if self.fail:
            raise OSError("the kernel refused")
        for key, value in change.stale.items():
            assert self.entries.pop(key) == value
        self.entries.update(change.changed)
        return (len(change.changed), len(change.stale))

    def close(self) -> None:
        pass


class _Policy:
    def __init__(self) -> None:
        self.maps: dict[int, _Map] = {}

    def ensure(self, ep_id: int, desired: Any = None) -> _Map:
        return self.maps.setdefault(ep_id, _Map())

    def remove(self, ep_id: int) -> None:
        self.maps.pop(ep_id, None)

    def get(self, ep_id: int) -> _Map | None:
        return self.maps.get(ep_id)


class _IPCache:
    def upsert(self, prefix: IPv4Network | IPv6Network, identity: int) -> None:
        pass

    def delete(self, prefix: IPv4Network | IPv6Network) -> bool:
        return True


class _Datapath:
    def __init__(self) -> None:
        self.policy = _Policy()
        self.ipcache = _IPCache()


def endpoint(ep_id: int, identity: int) -> Endpoint:
    return Endpoint(
        id=ep_id, container_id=f"c{ep_id}", pod_name=f"p{ep_id}", namespace="default",
        labels={}, identity=identity, state=EndpointState.READY, ipv4=None, ipv6=None,
        ifname="eth0", netns="/nonexistent", lxc=f"lxc{ep_id}", lxc_ifindex=0, mac="",
        node_mac="", created_at=0.0,
    )  # fmt: skip


def manager(tmp_path: Path) -> PolicyManager:
    pm = PolicyManager(
        datapath=_Datapath(),  # type: ignore[arg-type]
        saved=tmp_path,
        identity_labels=LABELS.get,
        all_identities=lambda: list(LABELS.items()),
    )
    pm.import_text(POLICIES, "p.yaml")
    return pm


def egress_ports(pm: PolicyManager, ep: Endpoint) -> set[tuple[int, int]]:
    pol = pm.realize(ep)
    return {(k.identity, k.port) for k in pol.entries if k.egress and k.port_prefix == 16}


def test_egress_named_ports_follow_the_pods(tmp_path: Path) -> None:
    pm = manager(tmp_path)
    client = endpoint(1, 256)
    assert egress_ports(pm, client) == set()
    assert pm.realized(1) is not None and not pm.realized(1).unsupported  # type: ignore[union-attr]
    # server a appears: the client uses "web", so it is the one to regenerate
    changed = pm.set_remote_named_ports([(257, {"web": (8080, "TCP")})])
    assert changed == {"web"}
    assert pm.affected_by_ports(changed) == [1]
    assert egress_ports(pm, client) == {(257, 8080)}
    # server b with another number: one entry per identity
    changed = pm.set_remote_named_ports(
        [
            (257, {"web": (8080, "TCP")}),
            (258, {"web": (9090, "TCP")}),
            (259, {"sql": (5432, "TCP")}),
        ]
    )
    assert changed == {"web", "sql"}
    assert pm.affected_by_ports({"sql"}) == []
    assert egress_ports(pm, client) == {(257, 8080), (258, 9090)}
    # nothing changed: nothing to regenerate; server a gone: its entry goes
    assert (
        pm.set_remote_named_ports(
            [
                (257, {"web": (8080, "TCP")}),
                (258, {"web": (9090, "TCP")}),
                (259, {"sql": (5432, "TCP")}),
            ]
        )
        == frozenset()
    )
    assert pm.set_remote_named_ports([(258, {"web": (9090, "TCP")})]) == {"web", "sql"}
    assert egress_ports(pm, client) == {(258, 9090)}


def test_deleting_a_policy_shrinks_the_selector_cache(tmp_path: Path) -> None:
    pm = manager(tmp_path)
    client = endpoint(1, 256)
    pm.realize(client)
    before = pm.cache.selectors()
    assert len(before) == 2
    assert pm.retain_selectors() == 0  # both still used
    assert pm.cache.selectors() == before
    pm.delete(["CiliumNetworkPolicy/default/db"])  # retains what the endpoints still use
    after = pm.cache.selectors()
    assert pm.retain_selectors() == 0
    pm.realize(client)  # the regeneration the agent does after every repository change
    assert pm.cache.selectors() == after
    assert len(after) == 1 and after < before
    # the remaining selector still reports new identities
    assert pm.identity_added(300, ("k8s:app=server", "k8s:instance=c", NS)) == after


def test_standalone_imports_survive_a_restart_in_the_state_dir(tmp_path: Path) -> None:
    pm = manager(tmp_path)  # imported POLICIES, saved in tmp_path
    keys = sorted(p.key for p in pm.repo.policies())
    assert keys and (tmp_path / "policies.json").exists()
    pm.delete([keys[0]])
    again = PolicyManager(
        datapath=_Datapath(),  # type: ignore[arg-type]
        saved=tmp_path,
        identity_labels=LABELS.get,
        all_identities=lambda: list(LABELS.items()),
    )
    assert sorted(p.key for p in again.repo.policies()) == []  # nothing until loaded
    assert again.load_saved() == len(keys) - 1
    assert sorted(p.key for p in again.repo.policies()) == keys[1:]
    # a saved document the parser refuses now is left out, the others load
    saved = json.loads((tmp_path / "policies.json").read_text())
    first = sorted(saved["policies"])[0]
    saved["policies"][first]["document"]["spec"] = {"endpointSelector": 5}
    (tmp_path / "policies.json").write_text(json.dumps(saved))
    third = PolicyManager(
        datapath=_Datapath(),  # type: ignore[arg-type]
        saved=tmp_path,
        identity_labels=LABELS.get,
        all_identities=lambda: list(LABELS.items()),
    )
    assert third.load_saved() == len(keys) - 2
    assert third.repo.get(first) is None


TO_SERVICES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toServices:
    - k8sService: {serviceName: external-db, namespace: default}
    - k8sServiceSelector: {selector: {matchLabels: {team: web}}}
"""


def _svc(
    name: str,
    addresses: list[str],
    *,
    selector: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> ServiceInfo:
    return ServiceInfo(
        namespace="default", name=name, type="ClusterIP", cluster_ips=["10.96.0.9"], ports=[],
        session_affinity="None", external_traffic_policy="Cluster", selector=selector,
        labels=labels or {},
        backends=[BackendInfo(address=a, ready=True, serving=True, terminating=False, ports={})
                  for a in addresses],
    )  # fmt: skip


def test_to_services_allows_the_endpoints_of_selector_less_services(tmp_path: Path) -> None:
    pm = PolicyManager(
        datapath=_Datapath(),  # type: ignore[arg-type]
        saved=tmp_path,
        identity_labels=LABELS.get,
        all_identities=lambda: list(LABELS.items()),
    )
    pm.import_text(TO_SERVICES, "p.yaml")
    changes: list[int] = []
    pm.add_listener(lambda: changes.append(1))
    client = endpoint(1, 256)

    def allowed() -> set[str]:
        pol = pm.realize(client)
        ids = {k.identity for k in pol.entries if k.egress}
        labels = {c for i in ids for c in pm.cache.get(i).labels}  # type: ignore[union-attr]
        # the host prefixes (an identity's labels name every prefix containing its own)
        return {c for c in labels if c.endswith("/128") or ("." in c and c.endswith("/32"))}

    assert allowed() == set()
    # True: what the rules allow changed, the caller regenerates the endpoints
    assert pm.service_changed(
        "default", "external-db", _svc("external-db", ["192.0.2.10", "2001:db8::1"])
    )
    assert changes and allowed() == {"cidr:192.0.2.10/32", "cidr:2001-db8--1/128"}
    # a Service selected by its labels, selector-less: its endpoints too; one with a pod
    # selector: nothing (upstream translates selector-less Services only), reported
    assert pm.service_changed(
        "default", "ext-2", _svc("ext-2", ["198.51.100.7"], labels={"team": "web"})
    )
    assert not pm.service_changed("default", "pods", _svc("pods", ["10.0.0.5"],
                                  labels={"team": "web"}, selector={"app": "web"}))  # fmt: skip
    assert not pm.service_changed("default", "other", _svc("other", ["198.51.100.9"]))  # no rule
    assert allowed() == {"cidr:192.0.2.10/32", "cidr:2001-db8--1/128", "cidr:198.51.100.7/32"}
    assert any("default/pods has a selector" in n for n in pm.realize(client).unsupported)
    # the endpoints change: the rule follows; the Service goes: so do its addresses
    assert pm.service_changed("default", "external-db", _svc("external-db", ["192.0.2.11"]))
    assert allowed() == {"cidr:192.0.2.11/32", "cidr:198.51.100.7/32"}
    assert pm.service_changed("default", "external-db", None)
    assert allowed() == {"cidr:198.51.100.7/32"}
    n = len(changes)
    assert not pm.service_changed(
        "default", "ext-2", _svc("ext-2", ["198.51.100.7"], labels={"team": "web"})
    )
    assert len(changes) == n  # nothing changed: no recomputation


TO_FQDNS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-api, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toFQDNs: [{matchPattern: "*.example.com"}]
"""


def test_to_fqdns_follows_the_dns_cache(tmp_path: Path) -> None:
    pm = PolicyManager(
        datapath=_Datapath(),  # type: ignore[arg-type]
        saved=tmp_path,
        identity_labels=LABELS.get,
        all_identities=lambda: list(LABELS.items()),
    )
    pm.import_text(TO_FQDNS, "p.yaml")
    changes: list[int] = []
    pm.add_listener(lambda: changes.append(1))
    client = endpoint(1, 256)

    def allowed() -> set[str]:
        pol = pm.realize(client)
        ids = {k.identity for k in pol.entries if k.egress}
        labels = {c for i in ids for c in pm.cache.get(i).labels}  # type: ignore[union-attr]
        return {c for c in labels if "." in c and c.endswith("/32")}

    assert allowed() == set()
    assert pm.dns_changed(lambda c: c.update(DNSLookup("api.example.com", ("192.0.2.5",), 30, 0)))
    assert changes and allowed() == {"cidr:192.0.2.5/32"}
    n = len(changes)
    # nothing expired, a name no rule selects, the same answer again: no recomputation
    assert not pm.dns_changed(lambda c: c.expire(10.0))
    assert not pm.dns_changed(lambda c: c.update(DNSLookup("other.org", ("198.51.100.1",), 30, 0)))
    assert not pm.dns_changed(
        lambda c: c.update(DNSLookup("api.example.com", ("192.0.2.5",), 60, 0))
    )
    assert len(changes) == n
    # the answer expires: its IP stays selected (a zombie) until a conntrack GC pass that
    # began after the expiry saw no connection to it; then the rule selects nothing again
    assert not pm.dns_changed(lambda c: c.gc(61.0))
    assert allowed() == {"cidr:192.0.2.5/32"} and len(changes) == n
    pm.fqdns.zombies.ct_gc_done(62.0, 92.0)
    assert pm.dns_changed(lambda c: c.gc(63.0))
    assert allowed() == set()


MORE = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: db}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"""


def test_a_realized_map_gets_only_what_changed(tmp_path: Path) -> None:
    """The map of an endpoint is written whole once; a change writes the difference from what
    was realized (no read back); an unchanged result writes nothing and is not announced; after
    a failed write the next one is whole again."""
    pm = manager(tmp_path)
    heard: list[int] = []
    pm.on_realized.append(heard.append)
    client, server = endpoint(1, 256), endpoint(2, 257)  # the server: no rule selects it
    pm.realize(client)
    pm.realize(server)
    maps = pm._dp.policy.maps  # type: ignore[attr-defined]
    assert maps[1].calls == ["apply"] and 2 not in maps and heard == [1, 2]
    pm.realize(client)
    pm.realize(server)
    assert maps[1].calls == ["apply"] and heard == [1, 2]  # nothing changed: nothing written
    # a change of the client's rules: its map gets the difference; the server: nothing again
    pm.import_text(MORE, "more.yaml")
    pol = pm.realize(client)
    pm.realize(server)
    assert maps[1].calls == ["apply", "write"] and heard == [1, 2, 1]
    whole = {pm._key(k): pm._value(e) for k, e in pol.entries.items()}
    assert maps[1].entries == whole
    assert any(k.protocol == 6 and k.port == 5432 for k in maps[1].entries)
    # the same policy again (a new revision, other rule objects): only the cookies' rules differ
    pm.import_text(POLICIES, "p.yaml")
    maps[1].fail = True
    with pytest.raises(OSError):
        pm.realize(client)
    assert pm.realized(1) is None
    maps[1].fail = False
    pm.realize(client)
    assert maps[1].calls[-1] == "apply"  # written whole after the failure
    assert maps[1].entries == {
        pm._key(k): pm._value(e)
        for k, e in pm.realized(1).entries.items()  # type: ignore[union-attr]
    }


def test_endpoints_sharing_a_policy_share_its_conversion(tmp_path: Path) -> None:
    pm = manager(tmp_path)
    converted: list[object] = []
    key = pm._key

    def counting(k: Any) -> Any:
        converted.append(k)
        return key(k)

    pm._key = counting  # type: ignore[method-assign]
    pm.realize(endpoint(1, 256))
    first = len(converted)
    assert first > 0
    pm.realize(endpoint(3, 256))  # the same identity: the same map state, converted once
    assert len(converted) == first
    pm.import_text(MORE, "more.yaml")
    pm.realize(endpoint(1, 256))
    changes = len(converted) - first
    pm.realize(endpoint(3, 256))  # the same difference: converted once
    assert len(converted) - first == changes
    maps = pm._dp.policy.maps  # type: ignore[attr-defined]
    assert maps[1].entries == maps[3].entries


def test_endpoints_of_one_identity_are_computed_once_per_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pm = manager(tmp_path)
    asked: list[int] = []
    engine = module.compute

    def counting(repo: Any, cache: Any, subject: Any, **kwargs: Any) -> Any:
        asked.append(subject.id)
        return engine(repo, cache, subject, **kwargs)

    monkeypatch.setattr(module, "compute", counting)
    twins = [endpoint(n, 256) for n in (1, 2, 3)]
    first = [pm.compute(ep) for ep in twins]
    assert asked == [256] and all(p is first[0] for p in first)
    pm.compute(endpoint(4, 256), {"web": (80, "TCP")})  # other named ports: its own result
    assert asked == [256, 256]
    pm.import_text(MORE, "more.yaml")  # a new revision: computed again, once
    second = [pm.compute(ep) for ep in twins]
    assert asked == [256, 256, 256] and second[0] is not first[0]
    assert any(k.port == 5432 for k in second[0].entries)
    pm.identity_added(300, ("k8s:app=db", NS))  # the selector cache moved: once more
    assert pm.compute(twins[0]).entries is not second[0].entries
    assert asked == [256, 256, 256, 256]


L7 = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
"""


def test_redirected_policies_are_shared_and_written_once(tmp_path: Path) -> None:
    pm = PolicyManager(
        datapath=_Datapath(),  # type: ignore[arg-type]
        saved=tmp_path,
        identity_labels=LABELS.get,
        all_identities=lambda: list(LABELS.items()),
        proxy_ports=ProxyPorts({HTTP_EGRESS: 10001}),
    )
    pm.import_text(L7, "l7.yaml")
    pol = pm.realize(endpoint(1, 256))
    assert {e.proxy_port for e in pol.entries.values()} == {0, 10001}
    pm.realize(endpoint(1, 256))
    pm.realize(endpoint(2, 256))
    assert pm.realized(2) is pol  # the redirect applied once for the identity
    assert pm._dp.policy.maps[1].calls == ["apply"]  # type: ignore[attr-defined]
