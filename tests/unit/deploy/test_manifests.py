"""deploy/: the manifests and the image build file checked against the code they deploy.

Flags are parsed by the real parsers (the agent's, the operator's, the relay's) after the
substitutions the kubelet makes (``$(VAR)`` from the container's env: ConfigMap keys and the
node name); the RBAC rules are checked against the API calls the agent's and the operator's code
makes (found in their source); the CRDs against the resource registry the API server serves;
the Containerfile against the tree and scripts/setup.sh; install-cni.sh is run."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ciliary.agent import main as agent_main
from ciliary.controllers import operator
from ciliary.controllers.process import parse_args
from ciliary.hubble.relay import cmd as relay_cmd
from ciliary.k8s.resources import ResourceType, by_path
from ciliary.lab.cniruntime import load_conflist

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
SRC = ROOT / "src"
NODE = "node-1"


def _documents() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "manifests").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


CONFIG: dict[str, str] = _one("ConfigMap", "ciliary-config")["data"]


def _containers(kind: str, name: str) -> list[dict[str, Any]]:
    spec = _one(kind, name)["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _container(kind: str, name: str, container: str) -> dict[str, Any]:
    (c,) = [c for c in _containers(kind, name) if c["name"] == container]
    return c


def _env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet resolves it on node ``NODE``."""
    out: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            out[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["name"] == "ciliary-config", ref
            assert ref["key"] in CONFIG, f"{var['name']}: no key {ref['key']} in ciliary-config"
            out[var["name"]] = CONFIG[ref["key"]]
        else:
            assert source["fieldRef"]["fieldPath"] == "spec.nodeName", source
            out[var["name"]] = NODE
    return out


def _argv(container: dict[str, Any]) -> list[str]:
    """``args`` with ``$(VAR)`` expanded as the kubelet does; an unknown variable fails."""
    env = _env(container)

    def expand(arg: str) -> str:
        def var(m: re.Match[str]) -> str:
            assert m.group(1) in env, f"{arg}: $({m.group(1)}) is not in the container's env"
            return env[m.group(1)]

        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var, arg)

    return [expand(a) for a in container.get("args", [])]


def _explicit(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Every flag in ``argv`` is one of the parser's own (no abbreviation accepted)."""
    known = {s for a in parser._actions for s in a.option_strings}
    for arg in argv:
        flag = arg.split("=", 1)[0]
        assert flag in known, f"{flag} is not a flag of {parser.prog}"


def test_agent_flags_are_the_agents() -> None:
    container = _container("DaemonSet", "ciliary", "ciliary-agent")
    assert container["command"] == ["ciliary-agent"]
    argv = _argv(container)
    parser = agent_main._parser()
    _explicit(parser, argv)
    args = parser.parse_args(argv)
    assert args.node_name == NODE
    # cluster-pool v2: no range flag, the node's CIDR comes from its CiliumNode (the operator's)
    assert args.ipam == CONFIG["ipam"] == "cluster-pool"
    assert args.ipv4_range is None and args.ipv6_range is None
    assert args.cluster_name == CONFIG["cluster-name"]
    assert args.monitor_aggregation == CONFIG["monitor-aggregation"]
    assert args.hubble_disable_tls is True
    assert args.hubble_metrics == CONFIG["hubble-metrics"]
    assert str(args.bpf_object).startswith("/usr/lib/ciliary/bpf/")
    agent_main.hubble_config(args)  # the agent's own checks of the Hubble flags pass


def test_operator_flags_are_the_operators() -> None:
    container = _container("Deployment", "ciliary-operator", "ciliary-operator")
    assert container["command"] == ["ciliary-operator"]
    argv = _argv(container)
    _explicit(operator.build_parser(), argv)
    args = parse_args(operator.build_parser(), argv)
    assert args.identity_gc_interval == float(CONFIG["identity-gc-interval"])
    assert args.identity_heartbeat_timeout == float(CONFIG["identity-heartbeat-timeout"])
    assert args.kubeconfig is None  # in a pod: the service account
    pool = operator.cluster_pool(args)
    assert [str(c) for c in pool.ipv4] == [CONFIG["cluster-pool-ipv4-cidr"]]
    assert pool.ipv4_mask == int(CONFIG["cluster-pool-ipv4-mask-size"]) and pool.enabled


def test_relay_flags_are_the_relays() -> None:
    container = _container("Deployment", "hubble-relay", "hubble-relay")
    assert container["command"] == ["ciliary", "hubble", "relay"]
    argv = _argv(container)
    parser = relay_cmd.build_parser()
    _explicit(parser, argv)
    relay_cmd.config_from_args(parser.parse_args(argv))


def test_every_config_key_reaches_a_flag() -> None:
    used = {
        var["valueFrom"]["configMapKeyRef"]["key"]
        for doc in _documents()
        if doc["kind"] in ("DaemonSet", "Deployment")
        for c in _containers(doc["kind"], doc["metadata"]["name"])
        for var in c.get("env", [])
        if "configMapKeyRef" in var.get("valueFrom", {})
    }
    assert used == set(CONFIG)
    # ... under its flag's name, as upstream's cilium-config keys are
    for doc in _documents():
        if doc["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in _containers(doc["kind"], doc["metadata"]["name"]):
            keys = {
                v["name"]: v["valueFrom"]["configMapKeyRef"]["key"]
                for v in c.get("env", [])
                if "configMapKeyRef" in v.get("valueFrom", {})
            }
            for arg in c.get("args", []):
                m = re.fullmatch(r"--([a-z0-9-]+)=\$\(([A-Z0-9_]+)\)", arg)
                if m and m.group(2) in keys:
                    assert keys[m.group(2)] == m.group(1), arg


def test_crds_are_the_served_kinds() -> None:
    crds = [d for d in _documents() if d["kind"] == "CustomResourceDefinition"]
    assert {c["spec"]["names"]["kind"] for c in crds} == {
        "CiliumNetworkPolicy",
        "CiliumClusterwideNetworkPolicy",
        "CiliumEndpoint",
        "CiliumNode",
        "CiliumIdentity",
    }
    for crd in crds:
        spec, names = crd["spec"], crd["spec"]["names"]
        (version,) = spec["versions"]
        row = by_path(spec["group"], version["name"], names["plural"])
        assert crd["metadata"]["name"] == f"{row.plural}.{row.group}"
        assert (names["kind"], names["singular"], names["listKind"]) == (
            row.kind,
            row.singular,
            row.list_kind,
        )
        assert tuple(names.get("shortNames", ())) == row.short_names
        assert tuple(names.get("categories", ())) == row.categories
        assert spec["scope"] == ("Namespaced" if row.namespaced else "Cluster")
        assert set(version.get("subresources", {})) == set(row.subresources)
        assert version["served"] and version["storage"]
        assert version["schema"]["openAPIV3Schema"]["x-kubernetes-preserve-unknown-fields"]


# --------------------------------------------------------------------------- RBAC

_VERBS = {
    "create": "create",
    "get": "get",
    "list": "list",
    "watch": "watch",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def _api_calls(paths: list[Path]) -> Iterator[tuple[ResourceType, str, str]]:
    """(resource, subresource, verb) of every KubeClient call and Informer in ``paths`` whose
    resource is a module-level ResourceType (as every user of ``ciliary.kube`` names them)."""
    for path in paths:
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args]
        if not calls:
            continue
        module: Any = None
        for call in calls:
            first = call.args[1] if _is_informer(call) and len(call.args) > 1 else call.args[0]
            if not isinstance(first, ast.Name):
                continue
            if module is None:
                module = importlib.import_module(_module_name(path))
            rt = getattr(module, first.id, None)
            if not isinstance(rt, ResourceType):
                continue
            sub = next(
                (
                    str(k.value.value)
                    for k in call.keywords
                    if k.arg == "subresource" and isinstance(k.value, ast.Constant)
                ),
                "",
            )
            if _is_informer(call):
                yield rt, "", "list"
                yield rt, "", "watch"
            elif isinstance(call.func, ast.Attribute) and call.func.attr in _VERBS:
                yield rt, sub, _VERBS[call.func.attr]


def _is_informer(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == "Informer"


def _granted(role: dict[str, Any], rt: ResourceType, sub: str, verb: str) -> bool:
    resource = f"{rt.plural}/{sub}" if sub else rt.plural
    return any(
        rt.group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in role["rules"]
    )


def _operator_modules() -> list[Path]:
    """operator.py and the ciliary.controllers modules it imports (what the process runs)."""
    main = SRC / "ciliary" / "controllers" / "operator.py"
    out = [main]
    for node in ast.walk(ast.parse(main.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "ciliary.controllers."
        ):
            out.append(SRC / Path(*str(node.module).split(".")).with_suffix(".py"))
    return out


@pytest.mark.parametrize(
    ("role", "paths"),
    [
        ("ciliary-agent", lambda: sorted((SRC / "ciliary" / "agent").rglob("*.py"))),
        ("ciliary-operator", _operator_modules),
    ],
)
def test_rbac_grants_every_call_the_code_makes(role: str, paths: Any) -> None:
    rules = _one("ClusterRole", role)
    calls = set(_api_calls(paths()))
    assert calls, f"no API calls found for {role}: the scan is broken"
    missing = sorted(
        f"{verb} {rt.plural}{'/' + sub if sub else ''} ({rt.group or 'core'})"
        for rt, sub, verb in calls
        if not _granted(rules, rt, sub, verb)
    )
    assert not missing, f"ClusterRole {role} does not grant: {missing}"
    binding = _one("ClusterRoleBinding", role)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": role, "namespace": "kube-system"}
    ]
    _one("ServiceAccount", role)


def test_the_scan_sees_the_identity_calls() -> None:
    """The allocator's create-if-absent and the GC's informers are what the scan must find."""
    agent = {
        (rt.plural, verb)
        for rt, _, verb in _api_calls(sorted((SRC / "ciliary" / "agent").rglob("*.py")))
    }
    assert {("ciliumidentities", "create"), ("ciliumidentities", "get")} <= agent
    gc = {(rt.plural, verb) for rt, _, verb in _api_calls(_operator_modules())}
    assert {
        ("ciliumidentities", "watch"),
        ("ciliumendpoints", "list"),
        ("ciliumidentities", "delete"),
    } <= gc


def test_the_scan_sees_the_service_informers() -> None:
    """The agent's Service, EndpointSlice and Node informers (``agent.k8s.services``)."""
    agent = {
        (rt.plural, verb)
        for rt, _, verb in _api_calls(sorted((SRC / "ciliary" / "agent").rglob("*.py")))
    }
    assert {
        (plural, verb)
        for plural in ("services", "endpointslices", "nodes")
        for verb in ("list", "watch")
    } <= agent


def test_pods_use_their_service_accounts() -> None:
    accounts = {d["metadata"]["name"] for d in _documents() if d["kind"] == "ServiceAccount"}
    for doc in _documents():
        if doc["kind"] in ("DaemonSet", "Deployment"):
            assert doc["spec"]["template"]["spec"]["serviceAccountName"] in accounts
            assert doc["metadata"]["namespace"] == "kube-system"


def test_agent_pod_has_the_host_mounts_it_needs() -> None:
    spec = _one("DaemonSet", "ciliary")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    hosts = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    agent = _container("DaemonSet", "ciliary", "ciliary-agent")
    assert agent["securityContext"]["privileged"] is True
    mounted = {hosts[m["name"]]: m["mountPath"] for m in agent["volumeMounts"]}
    for path in ("/sys/fs/bpf", "/run/ciliary", "/sys/fs/cgroup"):
        assert mounted[path] == path  # the agent's defaults and the CNI plugin's socket path
    init = _container("DaemonSet", "ciliary", "install-cni")
    env = _env(init)
    into = {m["mountPath"]: hosts[m["name"]] for m in init["volumeMounts"]}
    assert into[env["CNI_BIN_DIR"]] == "/opt/cni/bin"
    assert into[env["CNI_CONF_DIR"]] == "/etc/cni/net.d"


# --------------------------------------------------------------------------- image


def _containerfile() -> list[str]:
    """Its instructions, continuation lines joined and comments dropped."""
    text = (DEPLOY / "Containerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [ins.strip() for ins in re.split(r"(?<!\\)\n", "\n".join(lines)) if ins.strip()]


def _setup_packages() -> set[str]:
    text = (ROOT / "scripts" / "setup.sh").read_text()
    m = re.search(r"APT_PACKAGES=\(([^)]*)\)", text)
    assert m
    return set(m.group(1).split())


def test_containerfile_copies_files_that_exist() -> None:
    copies = [i for i in _containerfile() if i.startswith("COPY ") and "--from=" not in i]
    assert copies
    for ins in copies:
        *sources, _dest = ins.split()[1:]
        for src in sources:
            assert (ROOT / src).exists(), f"{ins}: {src} does not exist in the tree"


def test_containerfile_installs_only_setups_packages() -> None:
    installs = [i for i in _containerfile() if "apt-get install" in i]
    assert len(installs) == 2  # build stage, runtime stage
    allowed = _setup_packages()
    for ins in installs:
        words = ins.split("--no-install-recommends", 1)[1].split("&&", 1)[0]
        packages = {w for w in words.replace("\\", " ").split()}
        assert packages and packages <= allowed, packages - allowed
    runtime = installs[1]
    for needed in ("iproute2", "bpftool", "libbpf1"):
        assert needed in runtime.split()
    assert "clang" in installs[0].split()  # BPF compiled at build time, not shipped


def test_image_has_what_the_manifests_run() -> None:
    instructions = _containerfile()
    scripts = set(re.findall(r"^(ciliary[\w-]*) = ", (ROOT / "pyproject.toml").read_text(), re.M))
    assert 'ENTRYPOINT ["ciliary-agent"]' in instructions
    copied = {i.split()[-1] for i in instructions if i.startswith("COPY ")}
    for doc in _documents():
        if doc["kind"] not in ("DaemonSet", "Deployment"):
            continue
        for c in _containers(doc["kind"], doc["metadata"]["name"]):
            command = c["command"][0]
            assert command in scripts or command in copied, command
    copy_bpf = next(i for i in instructions if "bpf_lxc.o" in i and i.startswith("COPY"))
    bpf_dir = copy_bpf.split()[-1]
    # the agent loads the overlay object from the lxc object's directory
    assert "/bpf_overlay.o " in copy_bpf
    assert (ROOT / "bpf" / "bpf_lxc.c").exists() and (ROOT / "bpf" / "bpf_overlay.c").exists()
    agent = _argv(_container("DaemonSet", "ciliary", "ciliary-agent"))
    assert f"--bpf-object={bpf_dir}bpf_lxc.o" in agent


def test_install_cni_installs_a_working_plugin(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "K8S_NODE_NAME": NODE,
        "CNI_BIN_DIR": str(tmp_path / "bin"),
        "CNI_CONF_DIR": str(tmp_path / "net.d"),
        "CILIARY_PYTHON": sys.executable,
    }
    out = subprocess.run(
        [str(DEPLOY / "install-cni.sh")],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    conflist = load_conflist(tmp_path / "net.d" / "05-ciliary.conflist")
    (plugin,) = conflist.plugins
    assert (plugin["type"], plugin["node"]) == ("ciliary-cni", NODE)
    # the runtime execs it with the host's python3 and nothing of ours on the path
    version = subprocess.run(
        [str(tmp_path / "bin" / "ciliary-cni")],
        check=False,
        input=json.dumps({"cniVersion": "1.1.0", "name": "x", "type": "ciliary-cni"}),
        env={"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION"},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert version.returncode == 0, version.stderr
    assert "1.1.0" in json.loads(version.stdout)["supportedVersions"]
    status = subprocess.run(
        [str(tmp_path / "bin" / "ciliary-cni")],
        check=False,
        input=json.dumps({"cniVersion": "1.1.0", "name": "x", "type": "ciliary-cni", "node": NODE}),
        env={"PATH": "/usr/bin:/bin", "CNI_COMMAND": "STATUS", "CILIARY_RUN_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 1
    assert json.loads(status.stdout)["code"] == 50  # no agent running for that node


def test_policy_import_through_the_agent_is_granted() -> None:
    """``ciliary policy import``/``delete`` through an agent get, create, replace and delete every
    policy kind of ``agent.k8s.policies.POLICY_TYPES``: the resource is a variable there, which the
    call scan above cannot follow."""
    from ciliary.agent.k8s.policies import POLICY_TYPES  # noqa: PLC0415

    rules = _one("ClusterRole", "ciliary-agent")
    missing = [
        f"{verb} {rt.plural}"
        for rt in POLICY_TYPES.values()
        for verb in ("get", "create", "update", "delete")
        if not _granted(rules, rt, "", verb)
    ]
    assert not missing, f"ClusterRole ciliary-agent does not grant: {missing}"
