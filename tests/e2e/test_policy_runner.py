"""``ciliary policy test``: the PolicyTest file, the runner and the CLI, in a real lab.

This module also holds what the other ``test_policy_*`` modules share (they import it): a lab
built from an example file of ``examples/policies/`` with unique names, removed with everything
it made even when a test fails, and helpers to change policy and check cases with real packets.
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from ciliary.client.agent import AgentClient
from ciliary.core.models import TraceRequest
from ciliary.lab import manager, policytest
from ciliary.lab.policytest import CaseResult, PolicyTestError, PolicyTestReport

from .conftest import CILIARY, REPO, assert_no_leftovers, sharing, unique

EXAMPLES = REPO / "examples" / "policies"
POLICY_WAIT = 20.0


# --------------------------------------------------------------------------------------------
# Shared helpers


def templated(text: str, lab: str, nodes: dict[str, str]) -> str:
    """An example lab file with its lab and node names replaced (whole words only)."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    old_lab = next(d for d in docs if d.get("kind") == "Lab")["metadata"]["name"]
    names = {old_lab: lab, **nodes}
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    return pattern.sub(lambda m: names[m.group(1)], text)


def example_nodes(path: Path) -> list[str]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    lab = next(d for d in docs if d.get("kind") == "Lab")
    return [n["name"] for n in lab["spec"]["nodes"]]


@dataclass
class PolicyLab:
    """A running lab made from an example, with helpers to change policy and probe it."""

    name: str
    nodes: list[str]
    file: Path
    imported: list[str] = field(default_factory=list)

    @property
    def node(self) -> str:
        return self.nodes[0]

    def client(self, node: str | None = None) -> AgentClient:
        return AgentClient(manager.agent_socket(node or self.node, name=self.name), timeout=60)

    def pod_ip(self, key: str, family: int = 4) -> str:
        for p in manager.status(self.name).pods:
            if f"{p.namespace}/{p.name}" == key:
                ip = p.ipv4 if family == 4 else p.ipv6
                assert ip is not None
                return ip
        raise KeyError(key)

    def run(self, pod: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return manager.run_in_pod(pod, list(argv), name=self.name, timeout=timeout)

    def import_policy(self, text: str, filename: str = "test-policy.yaml") -> list[str]:
        """Import policy YAML on every node (returns once the endpoints are regenerated)."""
        keys: list[str] = []
        for node in self.nodes:
            with self.client(node) as cl:
                keys = cl.policy_import(text, filename).keys
        self.imported.extend(k for k in keys if k not in self.imported)
        return keys

    def delete_policies(self, keys: Sequence[str] | None = None) -> None:
        """Delete ``keys`` (default: every policy imported through :meth:`import_policy`)."""
        keys = list(self.imported if keys is None else keys)
        if not keys:
            return
        for node in self.nodes:
            with self.client(node) as cl:
                present = {p.key for p in cl.policy_list().policies}
                gone = [k for k in keys if k in present]
                if gone:
                    cl.policy_delete(gone)
        self.imported = [k for k in self.imported if k not in keys]

    def apply(self, path: Path) -> None:
        """``lab apply`` a policy file (the cluster store path, as kubectl apply), then wait until
        every agent has loaded it and regenerated its endpoints."""
        text = path.read_text()
        manager.apply(path, name=self.name)
        wanted = {
            f"{d['kind']}/{d['metadata'].get('namespace', 'default')}/{d['metadata']['name']}"
            for d in yaml.safe_load_all(text)
            if d
        }
        self.wait_policies(wanted)

    def wait_policies(self, wanted: set[str]) -> None:
        deadline = time.monotonic() + POLICY_WAIT
        while time.monotonic() < deadline:
            if all(self._realized(node, wanted) for node in self.nodes):
                return
            time.sleep(0.2)
        pytest.fail(f"policies {sorted(wanted)} not realized within {POLICY_WAIT:.0f}s")

    def _realized(self, node: str, wanted: set[str]) -> bool:
        with self.client(node) as cl:
            listing = cl.policy_list()
            if not wanted <= {p.key for p in listing.policies}:
                return False
            return all(
                cl.endpoint_policy(e.id).revision >= listing.revision for e in cl.endpoints()
            )

    def check(self, cases_yaml: str, *, name: str = "cases") -> PolicyTestReport:
        """Run PolicyTest cases (YAML list of cases) with real packets; returns the report."""
        doc = {
            "apiVersion": policytest.API_VERSION,
            "kind": policytest.KIND,
            "metadata": {"name": name},
            "spec": {"cases": yaml.safe_load(cases_yaml)},
        }
        tests = policytest.parse_text(yaml.safe_dump(doc), f"<{name}>")
        return policytest.run(tests, name=self.name)

    def expect(self, cases_yaml: str, *, name: str = "cases") -> PolicyTestReport:
        """:meth:`check`, failing the test with every failed case explained."""
        report = self.check(cases_yaml, name=name)
        assert report.passed, explain(report)
        return report


def explain(report: PolicyTestReport) -> str:
    lines = []
    for c in report.cases:
        if not c.passed:
            lines.append(
                f"{c.name} ({c.src} -> {c.dst} {c.port or ''}/{c.protocol}): "
                f"{'; '.join(c.problems)} [datapath {c.datapath_event or '-'}, "
                f"client {c.client}, trace {c.trace} {c.trace_reason}]"
            )
    return "failed cases:\n" + "\n".join(lines)


def case(report: PolicyTestReport, name: str) -> CaseResult:
    return next(c for c in report.cases if c.name == name)


def refusals_are_final(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on in the test, a TCP reset is the answer: the runner otherwise takes one for a
    server still starting and asks again for SERVER_START_GRACE (5 s a case). For cases whose
    allowed port nobody listens on (a reset is what they assert); an allowed case to a server
    still starting passes as well (the datapath's FORWARDED decides, a reset is a reply)."""
    monkeypatch.setattr(policytest, "SERVER_START_GRACE", 0.0)


def _policy_lab_up(
    tmp_path_factory: pytest.TempPathFactory, example: str, prefix: str
) -> PolicyLab:
    src = EXAMPLES / example
    name = unique(prefix)
    nodes = {old: unique("n") for old in example_nodes(src)}
    path = tmp_path_factory.mktemp(prefix) / example
    path.write_text(templated(src.read_text(), name, nodes))
    made = PolicyLab(name, list(nodes.values()), path)
    try:
        manager.up(path)
    except BaseException:
        _policy_lab_down(made)
        raise
    return made


def _policy_lab_down(lab: PolicyLab) -> None:
    if lab.name in manager.list_labs():
        manager.down(lab.name)
    assert_no_leftovers(lab.name, lab.nodes)


def policy_lab(
    tmp_path_factory: pytest.TempPathFactory,
    example: str,
    prefix: str = "pt",
    request: pytest.FixtureRequest | None = None,
    held: dict[str, tuple[Any, Callable[[Any], None]]] | None = None,
) -> Iterator[PolicyLab]:
    """A lab from ``examples/policies/<example>`` with unique names; removed after the module,
    and proved gone (netns, pins, state, cgroups, processes), whatever happened. With the
    module fixture's ``request`` and ``_shared_labs`` (``held``), a module that sets
    ``SHARES_LAB = example`` shares it with the others that do (conftest ``sharing``)."""
    if request is None or held is None:
        made = _policy_lab_up(tmp_path_factory, example, prefix)
        try:
            yield made
        finally:
            _policy_lab_down(made)
        return
    with sharing(
        request, held, example, lambda: _policy_lab_up(tmp_path_factory, example, prefix),
        _policy_lab_down,
    ) as shared:  # fmt: skip
        yield shared


# --------------------------------------------------------------------------------------------
# The runner's own tests


# the AKS walkthrough lab, shared with test_policy_aks (which removes its steps 2 and 3 again);
# what these tests import they delete
SHARES_LAB = "aks-walkthrough.yaml"


@pytest.fixture(scope="module")
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _shared_labs: dict[str, tuple[Any, Callable[[Any], None]]],
) -> Iterator[PolicyLab]:
    yield from policy_lab(tmp_path_factory, SHARES_LAB, "ptr", request, _shared_labs)


def _write(tmp_path: Path, text: str, name: str = "tests.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


HEADER = "apiVersion: ciliary.io/v1alpha1\nkind: PolicyTest\nmetadata: {name: t}\nspec:\n"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            "  cases:\n  - {from: a, to: b, port: 80, expect: alow}",
            "tests.yaml: document 1 (PolicyTest t): spec.cases[0].expect: expected 'allow' or"
            " 'deny', got 'alow'",
        ),
        (
            "  cases:\n  - {from: a, to: b, port: 80, expect: allow, prot: UDP}",
            "tests.yaml: document 1 (PolicyTest t): spec.cases[0].prot: unknown field",
        ),
        (
            "  cases:\n  - {from: a, to: b, protocol: UDP, expect: allow}",
            "tests.yaml: document 1 (PolicyTest t): spec.cases[0].port: required for UDP",
        ),
        (
            "  cases:\n  - {from: a, to: b, port: 1, protocol: ICMP, expect: deny}",
            "tests.yaml: document 1 (PolicyTest t): spec.cases[0].port: ICMP has no port"
            " (an echo request is sent)",
        ),
        (
            "  cases:\n  - {from: a, to: b, port: 70000, expect: deny}",
            "tests.yaml: document 1 (PolicyTest t): spec.cases[0].port: input should be less"
            " than or equal to 65535, got int 70000",
        ),
        (
            "  cases:\n  - {from: 10.0.0.1, to: b, port: 80, expect: deny}",
            "tests.yaml: document 1 (PolicyTest t): spec.cases[0].from: must be a pod or host,"
            " not an address (10.0.0.1)",
        ),
        (
            "  cases:\n  - {from: a, to: b, port: 80, expect: allow, dropReason: 133}",
            "tests.yaml: document 1 (PolicyTest t): spec.cases[0].dropReason: only with"
            " expect: deny",
        ),
        (
            "  cases: []",
            "tests.yaml: document 1 (PolicyTest t): spec.cases: must not be empty",
        ),
        (
            "  cases:\n  - {to: b, port: 80, expect: deny}",
            "tests.yaml: document 1 (PolicyTest t): spec.cases[0].from: required field is"
            " missing",
        ),
    ],
    ids=[
        "bad-expect", "unknown-field", "udp-needs-port", "icmp-no-port", "port-range",
        "from-address", "dropreason-allow", "no-cases", "missing-from",
    ],
)  # fmt: skip
def test_file_problems_are_one_line_with_file_case_and_field(
    tmp_path: Path, body: str, problem: str
) -> None:
    path = _write(tmp_path, HEADER + body + "\n")
    with pytest.raises(PolicyTestError) as err:
        policytest.load_file(path)
    assert err.value.problems == [problem.replace("tests.yaml", str(path))]


def test_cli_reports_file_problems_one_per_line(tmp_path: Path) -> None:
    """No lab is needed to find a file's problems: every one is printed, one line each, exit 1."""
    path = _write(
        tmp_path, HEADER + "  cases:\n  - {from: a, to: b, port: 80, expect: alow, prot: UDP}\n"
    )
    res = subprocess.run(
        [CILIARY, "policy", "test", str(path)], capture_output=True, text=True, check=False
    )
    assert res.returncode == 1
    where = f"Error: {path}: document 1 (PolicyTest t): spec.cases[0]"
    assert res.stderr.strip().splitlines() == [
        f"{where}.expect: expected 'allow' or 'deny', got 'alow'",
        f"{where}.prot: unknown field",
    ]


def test_every_problem_of_a_file_is_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEADER
        + "  cases:\n  - {from: a, to: b, expect: maybe}\n  - {from: a, port: 1, expect: deny}"
        "\n---\napiVersion: ciliary.io/v1alpha1\nkind: Lab\nmetadata: {name: x}\n",
    )
    with pytest.raises(PolicyTestError) as err:
        policytest.load_file(path)
    assert len(err.value.problems) == 4, err.value.problems
    assert any("document 2" in p and "kind: expected 'PolicyTest'" in p for p in err.value.problems)
    dup = _write(tmp_path, HEADER + "  cases:\n  - {from: a, from: b}\n", "dup.yaml")
    with pytest.raises(PolicyTestError, match="duplicate key 'from'"):
        policytest.load_file(dup)


def test_shipped_examples_parse() -> None:
    """Every file of examples/policies is a valid PolicyTest, lab or policy file."""
    from ciliary.lab import schema  # noqa: PLC0415
    from ciliary.policy.api import parse_policy_text  # noqa: PLC0415

    files = sorted(EXAMPLES.glob("*.yaml"))
    assert any(p.name.endswith(".test.yaml") for p in files)
    for path in files:
        text = path.read_text()
        if path.name.endswith(".test.yaml"):
            assert policytest.load_file(path)
        elif "kind: Lab" in text:
            assert schema.load_lab_file(path).pods
        else:
            assert parse_policy_text(text, str(path))


def test_unknown_pod_fails_before_any_packet(lab: PolicyLab, tmp_path: Path) -> None:
    path = _write(
        tmp_path, HEADER + "  cases:\n  - {from: development/frontend, to: nope/web, port: 80,"
        " expect: deny}\n",
    )  # fmt: skip
    res = subprocess.run(
        [CILIARY, "policy", "test", str(path), "--name", lab.name],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1
    assert "spec.cases[0]: the lab" in res.stderr and "has no pod nope/web" in res.stderr
    assert "production/backend" in res.stderr  # the pods it has are listed


def test_cli_table_json_and_exit_codes(lab: PolicyLab, tmp_path: Path) -> None:
    """Exit 0 when every case holds, 1 when one does not; ``-o json`` has the whole report;
    a wrong expectation is reported with the datapath's and the trace's own verdicts."""
    good = _write(
        tmp_path,
        HEADER + "  cases:\n"
        "  - {name: denied, from: development/frontend, to: production/backend, port: 80,"
        " expect: deny, dropReason: 133}\n"
        "  - {name: free, from: development/frontend, to: development/tools, port: 7,"
        " expect: allow}\n"
        "  - {name: ping, from: development/tools, to: default/frontend, protocol: ICMP,"
        " expect: allow}\n",
    )
    res = subprocess.run(
        [CILIARY, "policy", "test", str(good), "--name", lab.name, "-o", "json"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["passed"] is True and report["lab"] == lab.name
    denied, free, ping = report["cases"]
    assert denied["datapath"] == "deny" and denied["drop_reason"] == 133
    assert denied["drop_reason_desc"] == "Policy denied" and denied["direction"] == "ingress"
    assert denied["trace"] == "deny"
    assert denied["reason"] == (
        "ingress: default deny: production/backend is selected for ingress by NetworkPolicy"
        " production/default-deny-ingress; no rule of it allows this peer/port"
    )
    assert denied["rules"] == ["NetworkPolicy production/default-deny-ingress"]
    assert free["datapath"] == "allow" and free["client"] == "connected"
    assert ping["datapath"] == "allow" and ping["client"] == "replied"
    # a denied case ends on the drop event, not on the client's timeout
    assert denied["seconds"] < 1.5, denied

    bad = _write(
        tmp_path,
        HEADER + "  cases:\n"
        "  - {name: wrong, from: development/frontend, to: production/backend, port: 80,"
        " expect: allow}\n",
        "bad.yaml",
    )
    res = subprocess.run(
        [CILIARY, "policy", "test", str(bad), "--name", lab.name],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1
    out = res.stdout
    assert "FAIL" in out and "deny (133)" in out and "ingress: default deny" in out
    assert "FAIL wrong: expected allow, the datapath says deny" in out
    assert "1 of 1 cases failed" in out


def test_udp_without_a_server_is_decided_by_the_datapath(lab: PolicyLab) -> None:
    """A UDP probe to a port nobody listens on gets no answer; the verdict is the datapath's."""
    report = lab.expect(
        """
        - {name: open, from: development/tools, to: default/frontend, port: 9999, protocol: UDP,
           expect: allow}
        - {name: closed, from: default/frontend, to: production/backend, port: 9999,
           protocol: UDP, expect: deny}
        """
    )
    assert case(report, "open").datapath == "allow"
    assert case(report, "closed").datapath == "deny"


FROM_FRONTEND = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-from-frontend, namespace: production}
spec:
  endpointSelector: {matchLabels: {role: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {role: frontend}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""
WHY = (
    "production/backend is selected for ingress by CiliumNetworkPolicy"
    " production/backend-from-frontend, NetworkPolicy production/default-deny-ingress; no rule of"
    " them allows this peer/port"
)
MISS = (
    "CiliumNetworkPolicy production/backend-from-frontend spec.ingress[0]: selects role=frontend"
    " in namespace production, but the peer is in namespace development"
)


def test_default_deny_drop_names_the_policies_that_select_the_endpoint(lab: PolicyLab) -> None:
    """Which policy dropped this? For a default deny: the policies that select the receiver for
    ingress, in the datapath's own event (``ciliary monitor``), the PolicyTest report and
    ``policy trace``, which also names the near miss (``fromEndpoints`` written in production's
    policy, so it only selects production's frontends: the classic namespace mistake)."""
    lab.import_policy(FROM_FRONTEND)
    try:
        mon = subprocess.Popen(
            [CILIARY, "--node", lab.node, "monitor", "--type", "drop"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # the subscription reaches the agent before the packet
            assert select.select([mon.stderr], [], [], 30)[0], "monitor did not start"
            assert mon.stderr is not None and "Listening" in mon.stderr.readline()
            time.sleep(0.3)
            report = lab.check(
                "- {name: dev, from: development/frontend, to: production/backend, port: 80,"
                " expect: deny, dropReason: 133, rule: production/backend-from-frontend}"
            )
            time.sleep(0.5)
        finally:
            mon.terminate()
            out, err = mon.communicate(timeout=10)
        dev = case(report, "dev")
        assert dev.passed, explain(report)
        assert dev.reason == f"ingress: default deny: {WHY}"
        backend = lab.pod_ip("production/backend")
        lines = [line for line in out.splitlines() if f"{backend}:80" in line]
        assert lines, out + err
        assert lines[0].endswith(f"default deny: {WHY}"), lines[0]

        with lab.client() as cl:
            tr = cl.policy_trace(
                TraceRequest(src="development/frontend", dst="production/backend", port=80)
            )
        assert tr.ingress.reason == "default deny" and tr.ingress.explanation == WHY
        assert tr.ingress.default_deny_by == [
            "CiliumNetworkPolicy production/backend-from-frontend",
            "NetworkPolicy production/default-deny-ingress",
        ]
        assert tr.ingress.near_misses == [MISS]
        with lab.client() as cl:  # the endpoint's policy says it too (GET /v1/endpoint/ID/policy)
            ep = next(e for e in cl.endpoints() if e.pod_name == "backend")
            status = cl.endpoint_policy(ep.id)
        assert status.ingress_enforced_by == tr.ingress.default_deny_by
        assert status.egress_enforced_by == []
        res = subprocess.run(
            [CILIARY, "--node", lab.node, "policy", "trace", "--from", "development/frontend",
             "--to", "production/backend", "--dport", "80/TCP"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert res.returncode == 1, res.stderr
        flat = " ".join(res.stdout.split())
        assert f"default deny: {WHY}" in flat, res.stdout
        assert "Near misses" in flat and MISS in flat, res.stdout
    finally:
        lab.delete_policies()
