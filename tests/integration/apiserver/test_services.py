"""Service cluster IPs and node ports against a real etcd: allocated on create, checked when
asked for, kept on update, released when the Service is really gone (after its finalizers, with
its namespace), still known after the API server restarts, and never handed out twice, even by
two API servers with their own views of one etcd."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ciliary.apiserver.etcd import EtcdClient
from ciliary.apiserver.etcdserver import EtcdProcess
from ciliary.apiserver.server import APIServer
from ciliary.apiserver.servicealloc import ServiceAllocator, parse_service_cidrs
from ciliary.apiserver.storage import Storage
from ciliary.lab.controlplane import (
    ControlPlane,
    restart_apiserver,
    start_control_plane,
    stop_control_plane,
)

pytestmark = pytest.mark.timeout(120)

Obj = dict[str, Any]
RANGE = ipaddress.ip_network("10.96.0.0/16")  # the lab's (controlplane.SERVICE_CLUSTER_IP_RANGE)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = start_control_plane(tmp_path_factory.mktemp("svc") / "lab")
    try:
        yield plane
    finally:
        stop_control_plane(plane)
        shutil.rmtree(plane.etcd.data_dir, ignore_errors=True)


def call(
    cp: ControlPlane,
    method: str,
    path: str,
    body: Obj | None = None,
    ctype: str = "application/json",
) -> tuple[int, Obj]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{cp.url}{path}", data=data, method=method)
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, context=cp.ssl_context(), timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def svc(name: str, **spec: Any) -> Obj:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def create(cp: ControlPlane, ns: str, obj: Obj, want: int = 201) -> Obj:
    code, doc = call(cp, "POST", f"/api/v1/namespaces/{ns}/services", obj)
    assert code == want, doc
    return doc


def causes(doc: Obj) -> dict[str, str]:
    return {c["field"]: c["message"] for c in doc["details"]["causes"]}


def namespace(cp: ControlPlane, name: str) -> None:
    code, doc = call(cp, "POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert code == 201, doc


def test_allocate_check_keep_release_and_restart(cp: ControlPlane) -> None:
    namespace(cp, "a")
    namespace(cp, "b")
    web = create(cp, "a", svc("web"))["spec"]
    ip = web["clusterIP"]
    assert ipaddress.ip_address(ip) in RANGE and web["clusterIPs"] == [ip]
    taken = create(cp, "b", svc("copy", clusterIP=ip), 422)
    assert taken["reason"] == "Invalid"
    assert causes(taken) == {
        "spec.clusterIPs": f'Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}:'
        " provided IP is already allocated"
    }
    assert (
        "not in the valid range"
        in causes(create(cp, "b", svc("x", clusterIP="10.1.0.1"), 422))["spec.clusterIPs"]
    )
    np = create(cp, "a", svc("np", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert np["spec"]["ports"][0]["nodePort"] == 30080
    dup = create(cp, "b", svc("np", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]), 422)
    assert causes(dup) == {
        "spec.ports[0].nodePort": "Invalid value: 30080: provided port is already allocated"
    }

    # updates: a PUT without the allocated values keeps them, a changed address is refused
    code, put = call(cp, "PUT", "/api/v1/namespaces/a/services/web", svc("web"))
    assert code == 200 and put["spec"]["clusterIPs"] == [ip], put
    code, doc = call(
        cp,
        "PATCH",
        "/api/v1/namespaces/a/services/web",
        {"spec": {"clusterIP": "10.96.7.7", "clusterIPs": ["10.96.7.7"]}},
        "application/merge-patch+json",
    )
    assert code == 422 and "may not change once set" in causes(doc)["spec.clusterIPs[0]"]
    # NodePort -> ClusterIP releases the node port at once
    code, doc = call(
        cp,
        "PATCH",
        "/api/v1/namespaces/a/services/np",
        {"spec": {"type": "ClusterIP"}},
        "application/merge-patch+json",
    )
    assert code == 200 and "nodePort" not in doc["spec"]["ports"][0], doc
    create(cp, "b", svc("np", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))

    # a Service being deleted holds its address until its last finalizer goes
    held = create(cp, "a", {**svc("held"), "metadata": {"name": "held", "finalizers": ["x/y"]}})
    held_ip = held["spec"]["clusterIP"]
    assert call(cp, "DELETE", "/api/v1/namespaces/a/services/held")[0] == 200
    create(cp, "b", svc("again", clusterIP=held_ip), 422)
    code, doc = call(
        cp,
        "PATCH",
        "/api/v1/namespaces/a/services/held",
        {"metadata": {"finalizers": None}},
        "application/merge-patch+json",
    )
    assert code == 200, doc
    assert create(cp, "b", svc("again", clusterIP=held_ip))["spec"]["clusterIP"] == held_ip

    # a restarted API server knows what is allocated (from etcd)
    restart_apiserver(cp)
    create(cp, "b", svc("copy", clusterIP=ip), 422)
    fresh = create(cp, "b", svc("fresh"))["spec"]["clusterIP"]
    assert fresh not in (ip, held_ip)
    # deleting the namespace deletes its Services and releases what they held
    assert call(cp, "DELETE", "/api/v1/namespaces/a")[0] == 200
    assert create(cp, "b", svc("moved", clusterIP=ip))["spec"]["clusterIP"] == ip
    # a dry run chooses but holds nothing
    dry = call(cp, "POST", "/api/v1/namespaces/b/services?dryRun=All", svc("dry", clusterIP=fresh))
    assert dry[0] == 422
    code, doc = call(cp, "POST", "/api/v1/namespaces/b/services?dryRun=All", svc("dry"))
    assert code == 201 and doc["spec"]["clusterIP"]
    assert call(cp, "GET", "/api/v1/namespaces/b/services/dry")[0] == 404


def test_two_api_servers_on_one_etcd_never_hand_out_one_address_twice(etcd: EtcdProcess) -> None:
    """Two servers with their own views of one etcd (another process's allocations unknown to
    each) and 30 concurrent creates in a /28: exactly its 13 choosable addresses are handed out,
    each once; the rest are 'range is full'."""

    async def main() -> None:
        host, port = etcd.host_port
        clients = [EtcdClient(f"{host}:{port}") for _ in range(2)]
        servers = []
        for client in clients:
            alloc = ServiceAllocator(parse_service_cidrs("10.96.0.0/28"))
            servers.append(
                TestServer(APIServer(Storage(client, alloc), service_allocator=alloc).app())
            )
        try:
            for server in servers:
                await server.start_server()
            async with aiohttp.ClientSession() as http:
                ns = {"metadata": {"name": "t"}}
                await http.post(servers[0].make_url("/api/v1/namespaces"), json=ns)

                async def one(i: int) -> tuple[int, Obj]:
                    url = servers[i % 2].make_url("/api/v1/namespaces/t/services")
                    async with http.post(url, json=svc(f"s{i}")) as resp:
                        return resp.status, await resp.json()

                answers = await asyncio.gather(*(one(i) for i in range(30)))
        finally:
            for server in servers:
                await server.close()
            for client in clients:
                await client.close()
        ips = [doc["spec"]["clusterIP"] for code, doc in answers if code == 201]
        assert sorted(ips, key=ipaddress.ip_address) == [f"10.96.0.{i}" for i in range(2, 15)]
        refused = [doc["message"] for code, doc in answers if code != 201]
        assert (
            refused
            == ["Internal error occurred: failed to allocate a serviceIP: range is full"] * 17
        )

    asyncio.run(main())
