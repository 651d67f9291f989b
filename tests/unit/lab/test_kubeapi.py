"""What the lab hands to kubectl apply (manifests) and what it writes as kubelet (Node, pod
status), without a cluster: documents in, objects out."""

from __future__ import annotations

from ciliary.lab import kubeapi, kubelet, manager, schema


def test_manifests_drop_the_lab_put_namespaces_first_and_pin_pods_to_their_nodes() -> None:
    raw = [
        {"apiVersion": "ciliary.io/v1alpha1", "kind": "Lab", "metadata": {"name": "l"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"containers": [{"name": "c"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"}, "spec": {}},
        {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
         "metadata": {"name": "p", "namespace": "shop"}, "spec": {}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
    ]  # fmt: skip
    docs = kubeapi.manifests(raw, {"shop/web": "n1", "default/client": "n2"})
    assert [d["kind"] for d in docs] == ["Namespace", "Pod", "Pod", "CiliumNetworkPolicy"]
    placeholder = {"name": "c", "image": kubeapi.LAB_PROCESS_IMAGE}
    assert docs[1]["spec"] == {"containers": [placeholder], "nodeName": "n1"}
    assert docs[2]["spec"] == {"nodeName": "n2"}
    assert "nodeName" not in raw[1]["spec"]  # the caller's documents are left alone


def test_containers_of_the_lab_without_an_image_get_the_placeholder() -> None:
    """The API requires an image; lab files (and the lab's own DNS pod) need not name one."""
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [{"name": "a", "image": "nginx:1.27"}, {"name": "b", "image": ""}],
        }}},
    }  # fmt: skip
    (out,) = kubeapi.manifests([deploy], {})
    spec = out["spec"]["template"]["spec"]
    assert [c["image"] for c in spec["initContainers"] + spec["containers"]] == [
        "ciliary.io/lab-process",
        "nginx:1.27",
        "ciliary.io/lab-process",
    ]
    pod = schema.PodSpec.model_validate(
        {"metadata": {"name": "dns", "namespace": "kube-system"},
         "spec": {"nodeName": "n1", "containers": [{"name": "c", "command": ["x"]}]}},
        strict=False,
    )  # fmt: skip
    doc = manager._pod_doc(pod)
    assert doc["spec"]["containers"][0]["image"] == kubeapi.LAB_PROCESS_IMAGE
    assert doc["spec"]["nodeName"] == "n1"


def test_object_paths_follow_the_resource_registry() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}}
    cnp = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
           "metadata": {"name": "p", "namespace": "shop"}}  # fmt: skip
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    assert kubeapi.object_path(pod) == "/api/v1/namespaces/default/pods/web"
    assert kubeapi.object_path(cnp) == "/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies/p"
    assert kubeapi.object_path(ns) == "/api/v1/namespaces/shop"


def test_kubectl_errors_keep_one_problem_per_line() -> None:
    err = kubeapi.KubeAPIError('The CiliumNetworkPolicy "bad" is invalid: spec.x: y\n\nz\n', 0)
    assert err.problems == ['The CiliumNetworkPolicy "bad" is invalid: spec.x: y', "z"]


def test_node_carries_kubelets_labels_cidrs_and_a_ready_status() -> None:
    node = kubelet.node("n1", {"zone": "a"}, ["10.200.0.0/24", "fd00::/120"])
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "n1" and labels["zone"] == "a"
    assert node["spec"] == {"podCIDR": "10.200.0.0/24", "podCIDRs": ["10.200.0.0/24", "fd00::/120"]}
    status = kubelet.node_status("n1", ["10.200.0.1"])
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert [c["status"] for c in ready] == ["True"]
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "10.200.0.1"},
        {"type": "Hostname", "address": "n1"},
    ]


def test_running_pod_status_is_ready_with_its_addresses() -> None:
    status = kubelet.pod_running(
        containers=[("main", None), ("web", "nginx")],
        container_id="lab-shop-web",
        pod_ips=["10.200.0.5", "fd00::5"],
        host_ip="10.200.0.1",
        started_at=0.0,
    )
    assert status["phase"] == "Running" and status["startTime"] == "1970-01-01T00:00:00Z"
    assert status["podIP"] == "10.200.0.5"
    assert status["podIPs"] == [{"ip": "10.200.0.5"}, {"ip": "fd00::5"}]
    assert status["hostIP"] == "10.200.0.1"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == conditions["ContainersReady"] == "True"
    seen = [
        (c["name"], c["image"], c["ready"], c["restartCount"]) for c in status["containerStatuses"]
    ]
    assert seen == [("main", "", True, 0), ("web", "nginx", True, 0)]
