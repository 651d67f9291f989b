"""Discovery documents: shapes kubectl relies on, and the machine's kubectl reading them."""

from __future__ import annotations

import json

import pytest

from ciliary.k8s import discovery
from ciliary.k8s.resources import RESOURCES
from tests.unit.k8s.kubectlserver import Route, kubectl, serve

KUBECTL_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
    "application/json"
)


def test_negotiation() -> None:
    assert discovery.negotiate(KUBECTL_ACCEPT) == "v2"
    assert discovery.negotiate(KUBECTL_ACCEPT.split(",", 1)[1]) == "v2beta1"
    assert discovery.negotiate("application/json") is None
    assert discovery.negotiate("") is None
    assert (
        discovery.negotiate("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList")
        is None
    )


def test_aggregated_documents_carry_every_field_kubectl_needs() -> None:
    ctype, body = discovery.handle("/apis", KUBECTL_ACCEPT) or ("", b"")
    assert ctype == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    doc = json.loads(body)
    assert doc["kind"] == "APIGroupDiscoveryList" and doc["apiVersion"] == "apidiscovery.k8s.io/v2"
    by_name = {item["metadata"]["name"]: item for item in doc["items"]}
    assert "" not in by_name and "apps" in by_name and "cilium.io" in by_name
    (v2,) = by_name["cilium.io"]["versions"]
    assert v2["freshness"] == "Current"
    cnp = next(r for r in v2["resources"] if r["resource"] == "ciliumnetworkpolicies")
    assert cnp["responseKind"] == {
        "group": "cilium.io",
        "version": "v2",
        "kind": "CiliumNetworkPolicy",
    }
    assert cnp["scope"] == "Namespaced" and cnp["singularResource"] == "ciliumnetworkpolicy"
    assert "cnp" in cnp["shortNames"] and "list" in cnp["verbs"]
    deploy = next(
        r for r in by_name["apps"]["versions"][0]["resources"] if r["resource"] == "deployments"
    )
    scale = next(s for s in deploy["subresources"] if s["subresource"] == "scale")
    assert scale["responseKind"] == {"group": "autoscaling", "version": "v1", "kind": "Scale"}

    ctype, body = discovery.handle("/api", KUBECTL_ACCEPT.split(",", 1)[1]) or ("", b"")
    assert ctype.endswith("v=v2beta1;as=APIGroupDiscoveryList")
    core = json.loads(body)
    assert core["apiVersion"] == "apidiscovery.k8s.io/v2beta1"
    (item,) = core["items"]
    pods = next(r for r in item["versions"][0]["resources"] if r["resource"] == "pods")
    assert pods["categories"] == ["all"] and pods["shortNames"] == ["po"]
    ns = next(r for r in item["versions"][0]["resources"] if r["resource"] == "namespaces")
    assert ns["scope"] == "Cluster"


def test_legacy_documents() -> None:
    answer = discovery.handle("/api", "application/json", "127.0.0.1:6443")
    assert answer is not None and answer[0] == "application/json"
    assert json.loads(answer[1]) == {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}
        ],
    }
    groups = discovery.api_group_list()["groups"]
    apps = next(g for g in groups if g["name"] == "apps")
    assert apps["preferredVersion"] == {"groupVersion": "apps/v1", "version": "v1"}
    core = discovery.api_resource_list("", "v1")
    assert core is not None and core["groupVersion"] == "v1"
    names = {r["name"]: r for r in core["resources"]}
    assert names["pods"]["namespaced"] and names["pods"]["kind"] == "Pod"
    assert names["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert not names["nodes"]["namespaced"]
    apps_v1 = discovery.api_resource_list("apps", "v1")
    assert apps_v1 is not None
    scale = next(r for r in apps_v1["resources"] if r["name"] == "deployments/scale")
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
    assert discovery.api_group("cilium.io") is not None
    for missing in ("/apis/nope", "/apis/apps/v9", "/api/v2", "/apis/a/b/c/d", "/version"):
        assert discovery.handle(missing, "application/json") is None
    served = {(r.group, r.version) for r in RESOURCES}
    for group, version in served:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        assert discovery.handle(path, KUBECTL_ACCEPT) is not None


def test_version_info() -> None:
    info = discovery.version_info()
    assert (info["major"], info["minor"], info["gitVersion"]) == ("1", "32", "v1.32.0")
    assert info["platform"].startswith("linux/")


def _route(aggregated: bool) -> Route:
    def route(path: str, query: str, accept: str) -> tuple[int, str, bytes] | None:
        if path == "/version":
            return 200, "application/json", json.dumps(discovery.version_info()).encode()
        answer = discovery.handle(path, accept if aggregated else "application/json")
        return None if answer is None else (200, answer[0], answer[1])

    return route


@pytest.mark.parametrize("aggregated", [True, False], ids=["aggregated", "legacy"])
def test_kubectl_lists_our_kinds(aggregated: bool) -> None:
    with serve(_route(aggregated)) as url:
        out = kubectl(url, "api-resources", "-o", "wide")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    for r in RESOURCES:
        assert r.plural in lines, f"{r.plural} missing from:\n{out.stdout}"
    assert "cnp,ciliumnp" in lines["ciliumnetworkpolicies"]
    assert "cilium.io/v2" in lines["ciliumnetworkpolicies"]
    assert " true " in lines["pods"] and " false " in lines["nodes"]  # NAMESPACED
    assert "deploy" in lines["deployments"]
    assert "all" in lines["pods"]  # CATEGORIES (wide)
