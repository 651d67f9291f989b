"""Cluster DNS records: Services, EndpointSlices and Pods rendered as the zone the DNS pod serves.

CoreDNS's ``kubernetes`` plugin is itself a client of the API: it watches Services,
EndpointSlices and Pods and answers from that cache. The lab's DNS pod cannot do this: pods do
not reach the API server (each node refuses to forward TCP 6443 to it, the lab's fence). So the
controller manager, which is an API client, renders the zone for it: this controller watches the
same three resources through the shared informers and writes the records file that
``ciliary workload dns-server --records`` serves (and re-reads when it changes), atomically
(a rename: the server never reads half a file), and only when its content changed. It is the
file's only writer; the lab passes ``--cluster-dns-records`` when it runs its own DNS pod.

What the zone holds, as the plugin answers (the Kubernetes DNS specification):

* ``<svc>.<ns>.svc.<domain>``: A/AAAA the Service's ``clusterIPs`` per family; for a headless
  Service (``clusterIP: None``) the addresses of its ready endpoints (every endpoint with
  ``publishNotReadyAddresses``), each also as ``<hostname>.<svc>.<ns>.svc.<domain>`` (the
  endpoint's ``hostname``: a StatefulSet's pods) or, without one, its dashed address,
  ``10-200-0-5.<svc>.<ns>.svc.<domain>`` (the plugin's ``endpointHostname``);
* ``_<port>._<proto>.<svc>.<ns>.svc.<domain>`` SRV for each named port: ``0 100 <port>
  <svc>.<ns>.svc.<domain>.``; headless, one per endpoint address with the endpoint's port of
  that name and its own name as target, weights ``100 // n`` as the plugin splits them;
* an ``ExternalName`` Service: a CNAME to its ``externalName``;
* ``<name>.<ns>.pod.<domain>`` and ``<dashed-ip>.<ns>.pod.<domain>``: every pod with addresses
  (the plugin's ``pods verified``; the name form is the lab's own).

The file (see ``workload/dns.py``) maps each name to its records by type, as rdata text:
``{"web.shop.svc.cluster.local.": {"A": ["10.96.0.20"]}}``. One work-queue key stands for the
whole zone: a burst of events is one render.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from pathlib import Path

from ciliary.controllers import objects as o
from ciliary.controllers.endpointslice import SERVICE_NAME, pod_addresses
from ciliary.controllers.informers import Informers
from ciliary.controllers.queue import Controller
from ciliary.core import atomicfile
from ciliary.kube.client import KubeObject
from ciliary.kube.informer import HandlerFuncs

log = logging.getLogger(__name__)

DEFAULT_DOMAIN = "cluster.local"
ZONE_KEY = "zone"

Records = dict[str, dict[str, list[str]]]
"""name (absolute, trailing dot) -> record type -> rdata texts."""


def dashed(address: str) -> str:
    """Kubernetes' DNS label of an address: ``10-200-0-5``, ``fd00-10-200--5``."""
    return address.replace(".", "-").replace(":", "-")


def _type_of(address: str) -> str | None:
    try:
        return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
    except ValueError:
        return None


def _add(records: Records, name: str, rdtype: str, rdata: str) -> None:
    known = records.setdefault(name, {}).setdefault(rdtype, [])
    if rdata not in known:
        known.append(rdata)


def _add_address(records: Records, name: str, address: str) -> None:
    rdtype = _type_of(address)
    if rdtype is not None:
        _add(records, name, rdtype, address)


def _cluster_ips(service: KubeObject) -> list[str]:
    spec = o.spec(service)
    ips = [str(ip) for ip in spec.get("clusterIPs") or [] if ip]
    if not ips and spec.get("clusterIP"):
        ips = [str(spec["clusterIP"])]
    return [ip for ip in ips if ip != "None"]


def _headless(service: KubeObject) -> bool:
    return o.spec(service).get("clusterIP") == "None"


def _ready(endpoint: KubeObject, publish_not_ready: bool) -> bool:
    ready = (endpoint.get("conditions") or {}).get("ready")
    return publish_not_ready or ready is None or bool(ready)


def _srv(priority: int, weight: int, port: int, target: str) -> str:
    return f"{priority} {weight} {port} {target}"


def _service_records(
    records: Records, service: KubeObject, slices: list[KubeObject], domain: str
) -> None:
    meta, spec = o.meta(service), o.spec(service)
    name = f"{meta['name']}.{meta['namespace']}.svc.{domain}."
    if spec.get("type") == "ExternalName":
        target = str(spec.get("externalName") or "").rstrip(".")
        if target:
            _add(records, name, "CNAME", f"{target}.")
        return
    ports = [p for p in spec.get("ports") or [] if p.get("name")]
    if not _headless(service):
        ips = _cluster_ips(service)
        if not ips:
            return
        for ip in ips:
            _add_address(records, name, ip)
        for port in ports:
            srv = f"_{port['name']}._{str(port.get('protocol') or 'TCP').lower()}.{name}"
            _add(records, srv, "SRV", _srv(0, 100, int(port["port"]), name))
        return
    records.setdefault(name, {})  # a headless Service's name exists, with or without endpoints
    publish = bool(spec.get("publishNotReadyAddresses"))
    targets: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for slice_ in slices:
        slice_ports = slice_.get("ports") or []
        for endpoint in slice_.get("endpoints") or []:
            if not _ready(endpoint, publish):
                continue
            for address in endpoint.get("addresses") or []:
                if _type_of(str(address)) is None:
                    continue
                host = str(endpoint.get("hostname") or "") or dashed(str(address))
                target = f"{host}.{name}"
                _add_address(records, name, str(address))
                _add_address(records, target, str(address))
                for port in slice_ports:
                    if port.get("name") and port.get("port") is not None:
                        proto = str(port.get("protocol") or "TCP").lower()
                        pair = (str(port["name"]), proto)
                        found = targets.setdefault(pair, [])
                        if (int(port["port"]), target) not in found:  # one per dual-stack pod
                            found.append((int(port["port"]), target))
    for (port_name, proto), found in sorted(targets.items()):
        weight = 100 // len(found)
        for number, target in found:
            _add(records, f"_{port_name}._{proto}.{name}", "SRV", _srv(0, weight, number, target))


def _pod_records(records: Records, pod: KubeObject, domain: str) -> None:
    if o.status(pod).get("phase") in ("Succeeded", "Failed"):
        return
    meta = o.meta(pod)
    zone = f"{meta['namespace']}.pod.{domain}."
    for address in pod_addresses(pod):
        _add_address(records, f"{meta['name']}.{zone}", address)
        _add_address(records, f"{dashed(address)}.{zone}", address)


def render(
    services: Iterable[KubeObject],
    slices: Iterable[KubeObject],
    pods: Iterable[KubeObject],
    domain: str = DEFAULT_DOMAIN,
) -> Records:
    """The records of the cluster's Services (with their EndpointSlices) and Pods."""
    domain = domain.strip(".")
    by_service: dict[tuple[str, str], list[KubeObject]] = {}
    for slice_ in slices:
        owner = o.labels(slice_).get(SERVICE_NAME)
        if owner:
            by_service.setdefault((o.meta(slice_)["namespace"], owner), []).append(slice_)
    records: Records = {}
    for service in sorted(services, key=lambda s: (o.meta(s)["namespace"], o.meta(s)["name"])):
        if o.deleting(service):
            continue
        key = (o.meta(service)["namespace"], o.meta(service)["name"])
        ordered = sorted(by_service.get(key, []), key=lambda s: str(o.meta(s)["name"]))
        _service_records(records, service, ordered, domain)
    for pod in sorted(pods, key=lambda p: (o.meta(p)["namespace"], o.meta(p)["name"])):
        _pod_records(records, pod, domain)
    return records


class ClusterDNSController(Controller):
    """Keeps ``path`` the zone of the informers' Services, EndpointSlices and Pods."""

    name = "clusterdns"

    def __init__(self, informers: Informers, path: Path, domain: str = DEFAULT_DOMAIN) -> None:
        super().__init__()
        self.informers = informers
        self.path = path
        self.domain = domain
        self._written: str | None = None
        everything = HandlerFuncs(
            add=self._changed,
            update=lambda _old, _new: self._changed(None),
            delete=self._changed,
        )
        for informer in (informers.services, informers.endpointslices, informers.pods):
            informer.add_handler(everything)
        self.queue.add(ZONE_KEY)  # the first render: an empty cluster is a zone too

    def _changed(self, _obj: KubeObject | None) -> None:
        self.queue.add(ZONE_KEY)

    async def reconcile(self, key: str) -> float | None:
        records = render(
            self.informers.services.store.objects(),
            self.informers.endpointslices.store.objects(),
            self.informers.pods.store.objects(),
            self.domain,
        )
        text = json.dumps(records, indent=1, sort_keys=True)
        if text != self._written or not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomicfile.write_text(self.path, text)
            self._written = text
            log.debug("%s: %d names written to %s", self.name, len(records), self.path)
        return None
