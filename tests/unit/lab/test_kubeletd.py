"""The kubelet role's pure parts: which pods it refuses, how an API Pod becomes the lab's pod
document, the restart rules per restartPolicy and their back-off, and the status it writes."""

from __future__ import annotations

from typing import Any

from ciliary.lab import kubelet, kubeletd
from ciliary.lab.state import ImageRecord


def api_pod(**container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-abc", "namespace": "shop", "uid": "u1",
            "labels": {"app": "web"}, "ownerReferences": [{"controller": True, "uid": "rs"}],
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "nodeName": "n1", "restartPolicy": "OnFailure", "schedulerName": "default-scheduler",
            "containers": [{"name": "main", "image": "nginx:1.27", **container}],
        },
        "status": {"phase": "Pending"},
    }  # fmt: skip


def test_an_image_without_command_is_refused_naming_the_pod() -> None:
    reason = kubeletd.refusal(api_pod(), {})
    assert reason is not None
    assert "shop/web-abc" in reason and "'main'" in reason and "nginx:1.27" in reason
    assert kubeletd.refusal(api_pod(command=["ciliary", "workload", "pause"]), {}) is None
    assert kubeletd.refusal(api_pod(args=["x"]), {}) is None
    other = {"redis:7": ImageRecord(command=["redis-server"])}
    assert kubeletd.refusal(api_pod(), other) == reason  # an unmapped image is still refused


def test_a_mapped_image_runs_its_command_and_args_unless_the_container_has_its_own() -> None:
    images = {"nginx:1.27": ImageRecord(command=["nginx"], args=["-g", "daemon off;"])}
    assert kubeletd.refusal(api_pod(), images) is None
    (c,) = kubeletd.pod_spec(api_pod(), images).spec.containers
    assert (c.command, c.args) == (["nginx"], ["-g", "daemon off;"])
    (c,) = kubeletd.pod_spec(api_pod(args=["-c", "/etc/n.conf"]), images).spec.containers
    assert (c.command, c.args) == (["nginx"], ["-c", "/etc/n.conf"])
    (c,) = kubeletd.pod_spec(api_pod(command=["sh"], args=[]), images).spec.containers
    assert (c.command, c.args) == (["sh"], [])  # a container's own command wins
    (c,) = kubeletd.pod_spec(api_pod(image="other", command=["x"]), images).spec.containers
    assert (c.command, c.args) == (["x"], [])


def test_api_pod_becomes_the_lab_pod_document() -> None:
    pod = kubeletd.pod_spec(
        api_pod(
            command=["ciliary", "workload", "http-server"],
            args=["--port", "80"],
            env=[{"name": "A", "value": "1"}, {"name": "B"}],
            workingDir="/tmp",
            ports=[{"name": "http", "containerPort": 80, "protocol": "TCP"}],
            resources={},
        )
    )
    assert pod.key == "shop/web-abc" and pod.node_name == "n1"
    assert pod.spec.restart_policy == "OnFailure" and pod.labels == {"app": "web"}
    (c,) = pod.spec.containers
    assert c.argv() == ["ciliary", "workload", "http-server", "--port", "80"]
    assert c.image == "nginx:1.27" and c.working_dir == "/tmp"
    assert [(e.name, e.value) for e in c.env] == [("A", "1"), ("B", "")]
    assert [p.container_port for p in c.ports] == [80]


def test_api_pod_security_context_and_limits_reach_the_sandbox() -> None:
    """What lab.podsandbox applies (user, group, non-root, limits) is carried; the rest of a
    securityContext (capabilities, ...) is left out rather than refused."""
    doc = api_pod(
        command=["ciliary", "workload", "pause"],
        securityContext={"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
        resources={"limits": {"memory": "64Mi", "cpu": "500m"}, "requests": {"cpu": "100m"}},
    )
    doc["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsGroup": 7, "fsGroup": 9}
    pod = kubeletd.pod_spec(doc)
    (c,) = pod.spec.containers
    assert c.security_context is not None and c.security_context.run_as_user == 1000
    assert c.resources is not None and c.resources.limits == {"memory": "64Mi", "cpu": "500m"}
    sc = pod.spec.security_context
    assert sc is not None and (sc.run_as_non_root, sc.run_as_group) == (True, 7)


def test_api_pod_volumes_reach_the_sandbox() -> None:
    """emptyDir volumes and the mounts are carried; another volume source is kept by name only
    (lab.podsandbox refuses a container that mounts it)."""
    doc = api_pod(
        command=["redis-server"],
        volumeMounts=[{"name": "data", "mountPath": "/var/lib/redis", "readOnly": True}],
    )
    doc["spec"]["volumes"] = [
        {"name": "data", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "conf", "configMap": {"name": "redis"}},
    ]
    pod = kubeletd.pod_spec(doc)
    (c,) = pod.spec.containers
    assert [(m.name, m.mount_path, m.read_only) for m in c.volume_mounts] == [
        ("data", "/var/lib/redis", True)
    ]
    data, conf = pod.spec.volumes
    assert data.empty_dir is not None and data.empty_dir.size_limit == "64Mi"
    assert conf.name == "conf" and conf.empty_dir is None


def test_restarts_follow_the_restart_policy_with_crash_loop_back_off() -> None:
    assert kubeletd._restarts("Always", 0) and kubeletd._restarts("Always", 3)
    assert kubeletd._restarts("OnFailure", 3) and kubeletd._restarts("OnFailure", None)
    assert not kubeletd._restarts("OnFailure", 0)
    assert not kubeletd._restarts("Never", 1)
    assert [kubeletd._backoff(n) for n in range(7)] == [0, 10, 20, 40, 80, 160, 300]
    # maxContainerRestartPeriod caps it; one under 10 s is every delay
    assert [kubeletd._backoff(n, 60.0) for n in range(6)] == [0, 10, 20, 40, 60, 60]
    assert [kubeletd._backoff(n, 2.0) for n in range(4)] == [0, 2, 2, 2]


def test_pod_status_reports_restarts_exit_codes_and_readiness() -> None:
    running = kubelet.ContainerState("main", "img", running=True, restarts=2)
    ended = kubelet.ContainerState("side", None, running=False, exit_code=3)
    status = kubelet.pod_status(
        phase="Running", containers=[running, ended], container_id="lab-shop-web",
        pod_ips=["10.0.0.2", "fd00::2"], host_ip="10.0.0.1", started_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    ready = {c["type"]: c["status"] for c in status["conditions"]}
    assert ready["Ready"] == "False" and ready["ContainersReady"] == "False"
    main, side = status["containerStatuses"]
    assert main["restartCount"] == 2 and main["ready"] and "running" in main["state"]
    assert side["state"]["terminated"]["exitCode"] == 3 and not side["ready"]
    assert status["podIP"] == "10.0.0.2" and [i["ip"] for i in status["podIPs"]][1] == "fd00::2"
    refused = kubelet.pod_status(
        phase="Failed", containers=[kubelet.ContainerState("main", "nginx", running=False,
                                                           waiting=("Refused", "no command"))],
        container_id="", pod_ips=[], host_ip=None, started_at="2026-01-01T00:00:00Z",
        reason="ImageWithoutCommand", message="pod shop/web-abc: ...",
    )  # fmt: skip
    assert refused["phase"] == "Failed" and refused["reason"] == "ImageWithoutCommand"
    assert refused["containerStatuses"][0]["state"]["waiting"]["reason"] == "Refused"
    assert "podIP" not in refused
