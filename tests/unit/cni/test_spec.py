"""The CNI spec module on its own: versions and conversion, the environment, the config, the
result, and the error JSON, without an agent (and, but for two netns checks, without root)."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciliary.cni import spec
from ciliary.cni.main import HANDLERS, run
from ciliary.cni.spec import (
    CNIError,
    ErrorCode,
    NetConf,
    Result,
    convert_result,
    decode_config,
    error_codes,
    parse_config,
    parse_env,
)

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def codes(exc: pytest.ExceptionInfo[CNIError]) -> int:
    return exc.value.code


# --------------------------------------------------------------------------- errors


def test_error_codes_are_the_specs() -> None:
    assert error_codes() == {
        "INCOMPATIBLE_VERSION": 1, "UNSUPPORTED_FIELD": 2, "UNKNOWN_CONTAINER": 3,
        "INVALID_ENV": 4, "IO_FAILURE": 5, "DECODE_FAILURE": 6, "INVALID_CONFIG": 7,
        "TRY_AGAIN_LATER": 11, "NOT_AVAILABLE": 50, "NOT_AVAILABLE_LIMITED": 51,
        "AGENT_REFUSED": 100, "IPAM_EXHAUSTED": 101, "NETNS_NOT_FOUND": 102,
        "ATTACHMENT_CONFLICT": 103,
    }  # fmt: skip


def test_error_json_shape() -> None:
    err = CNIError(ErrorCode.INVALID_CONFIG, "bad thing", "more about it")
    assert err.to_dict("1.0.0") == {
        "cniVersion": "1.0.0", "code": 7, "msg": "bad thing", "details": "more about it",
    }  # fmt: skip
    assert json.loads(err.to_json()) == {**err.to_dict(), "cniVersion": "1.1.0"}
    assert "details" not in CNIError(4, "no details").to_dict()
    assert str(err) == "bad thing" and repr(err) == "CNIError(7, 'bad thing')"


def test_error_message_is_always_one_line() -> None:
    err = CNIError(100, "first\n  second\n\nthird  ")
    assert err.msg == "first; second; third"
    assert CNIError(100, "  \n ").msg == "unknown error"


# --------------------------------------------------------------------------- versions


def test_version_parsing_and_ordering() -> None:
    assert spec.parse_version("1.10.2") == (1, 10, 2)
    assert spec.version_at_least("1.0.0", "0.4.0")
    assert not spec.version_at_least("0.3.1", "0.4.0")
    for bad in ("1.0", "a.b.c", "", "1.0.0-rc1"):
        with pytest.raises(CNIError) as exc:
            spec.parse_version(bad)
        assert codes(exc) == 1


def test_supported_versions_and_negotiation() -> None:
    for v in VERSIONS:
        assert spec.check_supported(v) == v
    with pytest.raises(CNIError) as exc:
        spec.check_supported("0.2.0")
    assert codes(exc) == 1 and "0.3.1, 0.4.0, 1.0.0, 1.1.0" in exc.value.msg
    for missing in (None, "", 5):
        with pytest.raises(CNIError) as exc:
            spec.check_supported(missing)
        assert codes(exc) == 7
    assert spec.negotiate("0.4.0", ["0.4.0", "1.1.0", "2.0.0"]) == "1.1.0"
    assert spec.negotiate("1.0.0", ["9.9.9"]) == "1.0.0"
    assert spec.negotiate("0.3.1", None) == "0.3.1"


def test_version_info() -> None:
    assert spec.version_info("0.4.0") == {"cniVersion": "0.4.0", "supportedVersions": VERSIONS}
    assert spec.version_info("7.0.0")["cniVersion"] == "1.1.0"
    assert spec.version_info(None)["cniVersion"] == "1.1.0"


def test_require_version() -> None:
    spec.require_version("1.1.0", "1.1.0", "GC")
    with pytest.raises(CNIError) as exc:
        spec.require_version("1.0.0", "1.1.0", "GC")
    assert codes(exc) == 1 and exc.value.msg.startswith("GC is not supported by CNI version 1.0.0")


# --------------------------------------------------------------------------- environment


BASE_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}  # fmt: skip


def env_error(**changes: str | None) -> CNIError:
    environ = {k: v for k, v in {**BASE_ENV, **changes}.items() if v is not None}
    with pytest.raises(CNIError) as exc:
        parse_env(environ)
    assert codes(exc) == 4
    return exc.value


def test_parse_env_for_add() -> None:
    env = parse_env({**BASE_ENV, "CNI_ARGS": "K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop;"})
    assert (env.command, env.container_id, env.netns, env.ifname) == (
        "ADD", "abc", "/run/netns/x", "eth0",
    )  # fmt: skip
    assert env.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert env.arg("K8S_POD_NAME") == "web" and env.arg("NOPE", "d") == "d"
    assert env.owner == "abc/eth0"


def test_command_is_required_and_known() -> None:
    assert "CNI_COMMAND is not set" in env_error(CNI_COMMAND=None).msg
    assert "unknown CNI_COMMAND 'ATTACH'" in env_error(CNI_COMMAND="ATTACH").msg
    for command in spec.COMMANDS:
        assert spec.parse_command({"CNI_COMMAND": command}) == command


def test_what_each_command_needs() -> None:
    # DEL: the netns may be gone already
    assert parse_env({**BASE_ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}).netns == ""
    assert "CNI_NETNS" in env_error(CNI_NETNS=None).msg
    assert "CNI_NETNS" in env_error(CNI_COMMAND="CHECK", CNI_NETNS="").msg
    # GC, STATUS, VERSION need no attachment at all
    for command in ("GC", "STATUS", "VERSION"):
        env = parse_env({"CNI_COMMAND": command, "CNI_CONTAINERID": "-ignored"})
        assert (env.container_id, env.ifname) == ("", "")


@settings(deadline=None)
@given(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,40}\Z"))
def test_valid_container_ids(cid: str) -> None:
    assert spec.validate_container_id(cid) == cid


# "abc\n": Python's "$" would let a trailing newline through; the spec's Go regexp does not
@pytest.mark.parametrize("cid", [None, "", "-abc", ".abc", "a b", "a/b", "ä", "a:b", "abc\n", "١٢"])
def test_invalid_container_ids(cid: str | None) -> None:
    assert "CNI_CONTAINERID" in env_error(CNI_CONTAINERID=cid).msg


@pytest.mark.parametrize(
    ("ifname", "why"),
    [(None, "not set"), ("", "not set"), (".", "not an interface name"),
     ("..", "not an interface name"), ("a" * 16, "16 characters"), ("eth/0", "'/'"),
     ("eth:0", "'/'"), ("eth 0", "whitespace"), ("eth\t0", "whitespace")],
)  # fmt: skip
def test_invalid_ifnames(ifname: str | None, why: str) -> None:
    msg = env_error(CNI_IFNAME=ifname).msg
    assert "CNI_IFNAME" in msg and why in msg


def test_ifname_of_15_characters_is_fine() -> None:
    assert parse_env({**BASE_ENV, "CNI_IFNAME": "a" * 15}).ifname == "a" * 15


def test_cni_args() -> None:
    assert spec.parse_cni_args("") == {}
    assert spec.parse_cni_args("A=1; B = x=y ;;") == {"A": "1", "B": "x=y"}
    assert "invalid pair 'oops'" in env_error(CNI_ARGS="A=1;oops").msg
    assert "invalid pair" in env_error(CNI_ARGS="=v").msg


def test_check_netns_errors(tmp_path: Path) -> None:
    cases = {
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path): "not a network namespace",  # a directory
        "/proc/self/ns/uts": "not a network namespace",  # a namespace, of another kind
        "/proc/self/ns/net": "plugin's own network namespace",
    }
    regular = tmp_path / "file"
    regular.write_text("")
    cases[str(regular)] = "not a network namespace"
    for path, why in cases.items():
        with pytest.raises(CNIError) as exc:
            spec.check_netns(path)
        assert codes(exc) == 102 and why in exc.value.msg, (path, exc.value.msg)


# --------------------------------------------------------------------------- results


FULL = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "lxc1", "mac": "02:00:00:00:00:01", "mtu": 1500},
        {"name": "eth0", "mac": "02:00:00:00:00:02", "mtu": 1500, "sandbox": "/run/netns/p",
         "socketPath": "/tmp/s", "pciID": "0000:00:01.0"},
    ],
    "ips": [
        {"address": "10.0.0.2/32", "gateway": "10.0.0.1", "interface": 1},
        {"address": "fd00::2/128", "gateway": "fd00::1", "interface": 1},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1400, "advmss": 1360, "priority": 5,
         "table": 100, "scope": 0},
        {"dst": "::/0", "gw": "fd00::1"},
    ],
    "dns": {"nameservers": ["10.0.0.10"], "domain": "cluster.local", "search": ["svc"],
            "options": ["ndots:5"]},
}  # fmt: skip


def test_result_in_1_1_0_keeps_everything() -> None:
    assert Result.parse(FULL).to_version("1.1.0") == FULL


def test_result_in_1_0_0_drops_the_1_1_0_fields() -> None:
    out = convert_result(FULL, "1.0.0")
    assert out["interfaces"][1] == {"name": "eth0", "mac": "02:00:00:00:00:02",
                                    "sandbox": "/run/netns/p"}  # fmt: skip
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.0.0.1"}
    assert all("version" not in ip for ip in out["ips"])
    assert out["dns"] == FULL["dns"]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_result_before_1_0_0_has_ip_versions(version: str) -> None:
    out = convert_result(FULL, version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert list(out["ips"][0]) == ["version", "address", "gateway", "interface"]
    assert "mtu" not in out["interfaces"][0]
    # and back: 0.x input with versions parses, the versions go again in 1.0.0
    again = convert_result(out, "1.0.0")
    assert again == convert_result(FULL, "1.0.0")


def test_ipam_results_have_no_interfaces() -> None:
    out = Result.parse(FULL).to_version("1.0.0", ipam=True)
    assert "interfaces" not in out
    assert all("interface" not in ip for ip in out["ips"])


def test_empty_result_still_has_dns() -> None:
    assert Result().to_version("1.0.0") == {"cniVersion": "1.0.0", "dns": {}}


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda r: r["ips"][0].update(address="10.0.0.2"), "no prefix length"),
        (lambda r: r["ips"][0].update(address="nonsense/8"), "not an address"),
        (lambda r: r["ips"][0].update(gateway="gw"), "gateway 'gw'"),
        (lambda r: r["ips"][0].update(version="6"), "version 6 but address 10.0.0.2/32"),
        (lambda r: r["ips"][0].update(interface=7), "interface 7 but there are 2"),
        (lambda r: r["routes"][0].update(dst="default"), "route dst 'default'"),
        (lambda r: r["interfaces"][0].pop("name"), "interfaces.0.name"),
        (lambda r: r.update(cniVersion="0.2.0"), "0.2.0 is not supported"),
    ],
)
def test_invalid_results(mutate: Any, why: str) -> None:
    bad = json.loads(json.dumps(FULL))
    mutate(bad)
    with pytest.raises(CNIError) as exc:
        Result.parse(bad)
    assert codes(exc) in (1, 7) and why in exc.value.msg, exc.value.msg


def test_result_must_be_an_object() -> None:
    with pytest.raises(CNIError) as exc:
        Result.parse([FULL])
    assert codes(exc) == 7


def test_sandbox_addresses_skip_host_interfaces() -> None:
    r = json.loads(json.dumps(FULL))
    r["ips"].append({"address": "192.168.0.1/24", "interface": 0})  # on the host side
    r["ips"].append({"address": "172.16.0.1/16"})  # no interface named
    assert Result.parse(r).sandbox_addresses("eth0") == [
        "10.0.0.2/32", "fd00::2/128", "172.16.0.1/16",
    ]  # fmt: skip
    assert Result.parse(r).sandbox_addresses("eth1") == ["172.16.0.1/16"]


_addresses = st.one_of(
    st.ip_addresses(v=4).map(lambda a: f"{a}/32"), st.ip_addresses(v=6).map(lambda a: f"{a}/128")
)


@settings(deadline=None)
@given(addresses=st.lists(_addresses, max_size=4), version=st.sampled_from(VERSIONS))
def test_conversion_round_trips(addresses: list[str], version: str) -> None:
    result = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
              "ips": [{"address": a, "interface": 0} for a in addresses]}  # fmt: skip
    once = convert_result(result, version)
    assert convert_result(once, version) == once
    back = convert_result(once, "1.1.0")
    assert [ip_address(i["address"].split("/")[0]) for i in back.get("ips", [])] == [
        ip_address(a.split("/")[0]) for a in addresses
    ]


# --------------------------------------------------------------------------- config


CONF = {"cniVersion": "1.0.0", "name": "ciliary", "type": "ciliary-cni", "node": "n1"}


def config_error(code: int, **changes: Any) -> CNIError:
    with pytest.raises(CNIError) as exc:
        parse_config({**CONF, **changes})
    assert codes(exc) == code, exc.value.msg
    return exc.value


def test_decode_config_errors() -> None:
    for stdin, why in (("", "no network config"), ("  ", "no network config"),
                       ("{", "not valid JSON"), ("[1]", "not a JSON object"),
                       ("null", "no network config")):  # fmt: skip
        with pytest.raises(CNIError) as exc:
            decode_config(stdin)
        assert codes(exc) == 6 and why in exc.value.msg
    assert decode_config(b'{"a": 1}') == {"a": 1}


def test_config_basics() -> None:
    conf = parse_config({**CONF, "somePluginKey": {"x": 1}, "mtu": 9000})
    assert (conf.version, conf.node, conf.mtu) == ("1.0.0", "n1", 9000)
    assert conf.extra == {"somePluginKey": {"x": 1}}
    assert conf.prev_result() is None and conf.attachments() is None
    assert conf.labels() == {} and conf.requested_ips() == []


def test_config_errors() -> None:
    assert "cniVersion" in config_error(7, cniVersion=None).msg
    assert "9.0.0" in config_error(1, cniVersion="9.0.0").msg
    assert "name" in config_error(7, name="-bad").msg
    assert "type" in config_error(7, type="").msg
    assert "mtu" in config_error(7, mtu=100).msg
    assert "runtimeConfig.ips" in config_error(7, runtimeConfig={"ips": "10.0.0.1"}).msg
    assert "portMappings" in config_error(7, runtimeConfig={"portMappings": [{}]}).msg
    assert "args.cni.labels" in config_error(7, args={"cni": {"labels": [{"k": 1}]}}).msg
    assert "prevResult" in config_error(7, prevResult=[]).msg


# Each message as the pydantic models that used to check the config worded it (recorded from
# them); the hand-written checks of ``spec`` keep the wording, the field order and the count.
PYDANTIC_WORDED = [
    ({"name": None}, "name: Input should be a valid string"),
    ({"name": ""}, "name: String should have at least 1 character"),
    ({"name": "-x"}, "name: must start with a letter or digit followed by letters, digits, '_', "
                     "'.' or '-'"),
    ({"type": 5}, "type: Input should be a valid string"),
    ({"mtu": 100}, "mtu: Input should be greater than or equal to 576"),
    ({"mtu": 70000}, "mtu: Input should be less than or equal to 65535"),
    ({"mtu": 1500.5}, "mtu: Input should be a valid integer, got a number with a fractional part"),
    ({"mtu": "lots"}, "mtu: Input should be a valid integer, unable to parse string as an integer"),
    ({"mtu": [1]}, "mtu: Input should be a valid integer"),
    ({"mtu": float("inf")}, "mtu: Input should be a finite number"),
    ({"node": 7}, "node: Input should be a valid string"),
    ({"cniVersions": "1.0.0"}, "cniVersions: Input should be a valid list"),
    ({"args": []}, "args: Input should be a valid dictionary or instance of Args"),
    ({"args": {"cni": {"labels": [{"k": 1}]}}}, "args.cni.labels.0.key: Field required (+1 more)"),
    ({"args": {"cni": {"ips": [1, 2]}}},
     "args.cni.ips.0: Input should be a valid string (+1 more)"),
    ({"runtimeConfig": None},
     "runtimeConfig: Input should be a valid dictionary or instance of RuntimeConfig"),
    ({"runtimeConfig": {"portMappings": [{"hostPort": 70000, "containerPort": -1}]}},
     "runtimeConfig.portMappings.0.hostPort: Input should be less than or equal to 65535 "
     "(+1 more)"),
    ({"runtimeConfig": {"bandwidth": {"ingressRate": -5}}},
     "runtimeConfig.bandwidth.ingressRate: Input should be greater than or equal to 0"),
    ({"capabilities": {"ips": "maybe", "portMappings": 2.5}},
     "capabilities.ips: Input should be a valid boolean, unable to interpret input (+1 more)"),
    ({"dns": {"nameservers": "10.0.0.1"}}, "dns.nameservers: Input should be a valid list"),
    ({"ipam": {"routes": [{"dst": "default"}]}},
     "ipam.routes.0.dst: route dst 'default' is not a CIDR"),
    ({"ipam": {"pools": [None]}}, "ipam.pools.0: Input should be a valid string"),
    ({"cni.dev/valid-attachments": [{"containerID": "", "ifname": "eth0"}]},
     "cni.dev/valid-attachments.0.containerID: String should have at least 1 character"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "msg"), PYDANTIC_WORDED)
def test_config_errors_keep_their_wording(changes: dict[str, Any], msg: str) -> None:
    assert config_error(7, **changes).msg == f"invalid network config: {msg}"


@pytest.mark.parametrize(
    ("prev", "msg"),
    [
        ({"ips": [{"address": "10.0.0.1", "interface": -1}]},
         "ips.0.address: '10.0.0.1' has no prefix length (want CIDR notation) (+1 more)"),
        ({"interfaces": [{"name": "eth0", "mtu": "x"}], "routes": [{"gw": "1.2.3.4"}]},
         "interfaces.0.mtu: Input should be a valid integer, unable to parse string as an "
         "integer (+1 more)"),
    ],
)  # fmt: skip
def test_result_errors_keep_their_wording(prev: dict[str, Any], msg: str) -> None:
    with pytest.raises(CNIError) as exc:
        Result.parse(prev, "1.0.0")
    assert (codes(exc), exc.value.msg) == (7, f"invalid CNI result: {msg}")


def test_lax_values_are_taken_as_before() -> None:
    """What pydantic's lax mode accepted is still accepted, converted the same way."""
    conf = parse_config({
        **CONF, "mtu": " 9_000 ", "capabilities": {"ips": "yes", "portMappings": 0},
        "runtimeConfig": {"portMappings": [{"hostPort": 80.0, "containerPort": True}]},
    })  # fmt: skip
    assert conf.mtu == 9000 and conf.capabilities == {"ips": True, "portMappings": False}
    mapping = conf.runtimeConfig.portMappings[0]
    assert (mapping.hostPort, mapping.containerPort, mapping.protocol) == (80, 1, "tcp")
    prev = Result.parse({"ips": [{"address": "fd00:0::5/64", "gateway": "fd00:0::1"}],
                         "routes": [{"dst": "10.1.2.3/8"}]})  # fmt: skip
    assert (prev.ips[0].address, prev.ips[0].gateway) == ("fd00::5/64", "fd00::1")
    assert prev.routes[0].dst == "10.0.0.0/8"


def test_unknown_keys_are_kept_apart() -> None:
    att = [{"containerID": "c1", "ifname": "eth0"}]
    conf = parse_config({**CONF, "valid_attachments": att, "x": 1})  # by attribute name
    assert conf.extra == {"x": 1} and conf.attachments() is not None
    both = parse_config({**CONF, "cni.dev/valid-attachments": [], "valid_attachments": att})
    assert both.attachments() == [] and both.extra == {"valid_attachments": att}


def test_cni_versions_list_is_negotiated() -> None:
    conf = parse_config({**CONF, "cniVersion": "0.4.0", "cniVersions": ["0.4.0", "1.1.0"]})
    assert conf.version == "1.1.0"


def test_labels_and_requested_ips() -> None:
    conf = parse_config({
        **CONF,
        "args": {"cni": {"labels": [{"key": "app", "value": "web"}], "ips": ["10.0.0.9"]}},
        "runtimeConfig": {"ips": ["10.0.0.5/24", " fd00::5 "]},
    })  # fmt: skip
    assert conf.labels() == {"app": "web"}
    assert [str(a) for a in conf.requested_ips()] == ["10.0.0.5", "fd00::5"]
    fallback = parse_config({**CONF, "args": {"cni": {"ips": ["10.0.0.9"]}}})
    assert [str(a) for a in fallback.requested_ips()] == ["10.0.0.9"]


@pytest.mark.parametrize(
    ("ips", "why"),
    [(["10.0.0.1", "10.0.0.2"], "more than one IPv4"), (["x"], "'x' is not an IP address")],
)
def test_requested_ips_errors(ips: list[str], why: str) -> None:
    conf = parse_config({**CONF, "runtimeConfig": {"ips": ips}})
    with pytest.raises(CNIError) as exc:
        conf.requested_ips()
    assert codes(exc) == 7 and why in exc.value.msg


def test_gc_attachments_and_legacy_key() -> None:
    att = [{"containerID": "c1", "ifname": "eth0"}]
    new = parse_config({**CONF, "cni.dev/valid-attachments": att}).attachments()
    old = parse_config({**CONF, "cni.dev/attachments": att}).attachments()
    assert new is not None and old is not None
    assert [(a.containerID, a.ifname) for a in new + old] == [("c1", "eth0")] * 2
    empty = parse_config({**CONF, "cni.dev/valid-attachments": []}).attachments()
    assert empty == []
    assert "containerID" in config_error(7, **{"cni.dev/valid-attachments": [{}]}).msg


def test_prev_result_is_parsed_in_the_configs_version() -> None:
    prev = convert_result(FULL, "0.4.0")
    conf = NetConf.from_dict({**CONF, "cniVersion": "0.4.0", "prevResult": prev})
    parsed = conf.prev_result()
    assert parsed is not None and [ip.family for ip in parsed.ips] == [4, 6]


def test_error_version() -> None:
    assert spec.error_version({"cniVersion": "0.4.0"}) == "0.4.0"
    assert spec.error_version({"cniVersion": "7.0.0"}) == "1.1.0"
    assert spec.error_version(None) == "1.1.0"


# --------------------------------------------------------------------------- the skeleton


def invoke(environ: dict[str, str], stdin: str) -> tuple[int, Any]:
    rc, out = run(environ, stdin, HANDLERS)
    return rc, json.loads(out) if out else None


def test_skeleton_version_and_error_order() -> None:
    assert invoke({"CNI_COMMAND": "VERSION"}, "garbage") == (0, spec.version_info(None))
    # environment errors come before config errors, in the config's version when we speak it
    rc, out = invoke({**BASE_ENV, "CNI_CONTAINERID": ""}, '{"cniVersion": "0.4.0"}')
    assert rc == 1 and out["code"] == 4 and out["cniVersion"] == "0.4.0"
    rc, out = invoke(BASE_ENV, "{")
    assert rc == 1 and out["code"] == 6 and out["cniVersion"] == "1.1.0"
    rc, out = invoke(BASE_ENV, json.dumps({**CONF, "cniVersion": "0.2.0"}))
    assert out["code"] == 1
    rc, out = invoke(BASE_ENV, json.dumps({**CONF, "ipam": {"type": "host-local"}}))
    assert out["code"] == 2 and "host-local" in out["msg"]
    rc, out = invoke({**BASE_ENV, "CNI_COMMAND": "CHECK"}, json.dumps({**CONF, "node": None}))
    assert out["code"] == 7 and "CHECK needs prevResult" in out["msg"]
    rc, out = invoke({"CNI_COMMAND": "STATUS"}, json.dumps(CONF))
    assert out["code"] == 1 and "STATUS" in out["msg"]


def test_skeleton_reports_its_own_bugs_as_one_line() -> None:
    def broken(conf: NetConf, env: spec.Env) -> None:
        raise RuntimeError("boom\nwith a second line")

    rc, out = run({"CNI_COMMAND": "STATUS"}, json.dumps(CONF), {"STATUS": broken})
    err = json.loads(out)
    assert rc == 1 and err["code"] == 199 and "\n" not in err["msg"] and "boom" in err["msg"]
