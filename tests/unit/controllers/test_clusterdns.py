"""The cluster DNS records controller's zone: Services (dual-stack ClusterIPs, named ports as
SRV), headless Services (ready endpoints, hostnames, per-endpoint SRV), ExternalName (CNAME) and
pods, rendered from API objects; and the controller's write of the file when a cache changes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from ciliary.controllers.clusterdns import ClusterDNSController, dashed, render
from ciliary.controllers.endpointslice import desired_slices
from ciliary.controllers.informers import Informers
from ciliary.kube.client import KubeObject

SVC = "svc.cluster.local."


def service(name: str, ns: str = "shop", **spec: Any) -> KubeObject:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"},
        "spec": spec,
    }


def pod(name: str, ips: list[str], ns: str = "shop", ready: bool = True, **spec: Any) -> KubeObject:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "db"}, "uid": name},
        "spec": {"containers": [{"name": "c"}], **spec},
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": ip} for ip in ips],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


WEB = service(
    "web",
    type="ClusterIP",
    clusterIP="10.96.0.20",
    clusterIPs=["10.96.0.20", "fd00:10:96::14"],
    ports=[
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"port": 9000, "protocol": "TCP"},  # unnamed: no SRV
    ],
)
DB = service(
    "db",
    clusterIP="None",
    clusterIPs=["None"],
    selector={"app": "db"},
    ports=[{"name": "pg", "port": 5432, "targetPort": 15432, "protocol": "TCP"}],
)
DB_PODS = [
    pod("db-0", ["10.200.0.7", "fd00:10:200::7"], hostname="db-0", subdomain="db"),
    pod("db-1", ["10.200.0.8"]),  # no hostname: named by its dashed address
    pod("db-2", ["10.200.0.9"], ready=False),  # not ready: not published
]
DB_SLICES = list(desired_slices(DB, DB_PODS).values())


def test_cluster_ip_service_per_family_and_srv_of_named_ports() -> None:
    records = render([WEB], [], [])
    assert records[f"web.shop.{SVC}"] == {"A": ["10.96.0.20"], "AAAA": ["fd00:10:96::14"]}
    assert records[f"_http._tcp.web.shop.{SVC}"] == {"SRV": [f"0 100 80 web.shop.{SVC}"]}
    assert records[f"_dns._udp.web.shop.{SVC}"] == {"SRV": [f"0 100 53 web.shop.{SVC}"]}
    assert len(records) == 3


def test_headless_service_ready_endpoints_hostnames_and_srv() -> None:
    records = render([DB], DB_SLICES, [])
    name = f"db.shop.{SVC}"
    assert records[name] == {"A": ["10.200.0.7", "10.200.0.8"], "AAAA": ["fd00:10:200::7"]}
    assert records[f"db-0.{name}"] == {"A": ["10.200.0.7"], "AAAA": ["fd00:10:200::7"]}
    assert records[f"10-200-0-8.{name}"] == {"A": ["10.200.0.8"]}
    assert f"10-200-0-9.{name}" not in records  # not ready
    # one SRV per endpoint (a dual-stack pod once), its port, weights split as CoreDNS's
    assert sorted(records[f"_pg._tcp.{name}"]["SRV"]) == [
        f"0 50 15432 10-200-0-8.{name}",
        f"0 50 15432 db-0.{name}",
    ]
    # publishNotReadyAddresses publishes the not-ready one too
    published = render(
        [{**DB, "spec": {**DB["spec"], "publishNotReadyAddresses": True}}], DB_SLICES, []
    )
    assert "10.200.0.9" in published[name]["A"] and f"10-200-0-9.{name}" in published


def test_headless_service_without_endpoints_still_exists() -> None:
    assert render([DB], [], []) == {f"db.shop.{SVC}": {}}


def test_external_name_is_a_cname_and_pods_have_their_names() -> None:
    ext = service("mail", type="ExternalName", externalName="smtp.example.com")
    server = pod("server", ["10.200.0.5", "fd00:10:200::5"], ns="default")
    done = {**pod("job", ["10.200.0.6"]), "status": {"phase": "Succeeded"}}
    records = render([ext], [], [server, done])
    assert records[f"mail.shop.{SVC}"] == {"CNAME": ["smtp.example.com."]}
    pods = "default.pod.cluster.local."
    assert records[f"server.{pods}"] == {"A": ["10.200.0.5"], "AAAA": ["fd00:10:200::5"]}
    assert records[f"10-200-0-5.{pods}"] == {"A": ["10.200.0.5"]}
    assert records[f"fd00-10-200--5.{pods}"] == {"AAAA": ["fd00:10:200::5"]}
    assert not any("job" in n for n in records)
    assert dashed("fd00::1") == "fd00--1"


def test_deleting_services_and_other_domains() -> None:
    deleting = {**WEB, "metadata": {**WEB["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert render([deleting], [], []) == {}
    assert "web.shop.svc.example.org." in render([WEB], [], [], "example.org.")


def test_controller_writes_the_file_on_changes(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        informers = Informers.create(None)  # type: ignore[arg-type]  # never started: no client
        path = tmp_path / "dns" / "records.json"
        controller = ClusterDNSController(informers, path)
        task = asyncio.create_task(controller.run())
        try:
            await _until(path.exists)
            first = json.loads(path.read_text())
            await informers.services._apply("ADDED", WEB)  # as the watch delivers it
            await _until(lambda: "web.shop.svc.cluster.local." in path.read_text())
            second = json.loads(path.read_text())
            await informers.services._apply("DELETED", WEB)
            await _until(lambda: json.loads(path.read_text()) == {})
            return first, second
        finally:
            task.cancel()

    first, second = asyncio.run(scenario())
    assert first == {}
    assert second == render([WEB], [], [])


async def _until(check: Any) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")
