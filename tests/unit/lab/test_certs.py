"""The lab CA (#10.18/19): names as upstream's, right key usages, root-only files, reuse, and
real mTLS with grpc: the node's certificate is accepted under its name, a client certificate
is required, and one from another lab's CA is refused."""

from __future__ import annotations

import asyncio
import ipaddress
import stat
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ciliary.cli.hubble_dial import lab_client_tls
from ciliary.lab import controlplane
from ciliary.lab.certs import LabCA, agent_flags, node_server_name, relay_flags, router_addresses


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [
        str(a) for a in ext.get_values_for_type(x509.IPAddress)
    ]


def test_node_certificate_names_and_usage(tmp_path: Path) -> None:
    ca = LabCA(tmp_path, cluster="lab1")
    pair = ca.node_server("node-a", router_addresses(["10.200.0.0/24", "fd00:10::/120"]))
    cert = _load(pair.cert)
    dns, ips = _sans(cert)
    assert node_server_name("node-a", "lab1") == "node-a.lab1.hubble-grpc.cilium.io"
    assert dns[0] == "node-a.lab1.hubble-grpc.cilium.io"
    assert set(ips) == {"127.0.0.1", "::1", "10.200.0.1", "fd00:10::1"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(_load(ca.ca_cert))
    client = _load(ca.relay_client().cert)
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    client.verify_directly_issued_by(_load(ca.ca_cert))


def test_files_are_root_only_and_reused(tmp_path: Path) -> None:
    ca = LabCA(tmp_path)
    first = ca.node_server("n")
    ca.relay_client()
    relay_flags(ca, tcp=True)
    assert stat.S_IMODE(ca.dir.stat().st_mode) == 0o700
    files = list(ca.dir.iterdir())
    assert {f.name for f in files} == {
        "ca.crt", "ca.key", "hubble-server-n.crt", "hubble-server-n.key",
        "hubble-relay-client.crt", "hubble-relay-client.key", "hubble-relay-server.crt",
        "hubble-relay-server.key", "hubble-client.crt", "hubble-client.key",
    }  # fmt: skip
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    before = first.cert.read_bytes(), ca.ca_cert.read_bytes()
    again = LabCA(tmp_path).node_server("n")  # a restarted agent keeps its certificate
    assert (again.cert.read_bytes(), ca.ca_cert.read_bytes()) == before


def test_flags_name_the_files(tmp_path: Path) -> None:
    ca = LabCA(tmp_path)
    flags = agent_flags(ca, "n", ("10.0.0.1",))
    assert flags[0::2] == [
        "--hubble-tls-cert-file", "--hubble-tls-key-file", "--hubble-tls-client-ca-files"
    ]  # fmt: skip
    assert all(Path(p).is_file() for p in flags[1::2])
    unix = relay_flags(ca, tcp=False)
    assert "--tls-relay-server-cert-file" not in unix and "--tls-hubble-client-cert-file" in unix
    assert lab_client_tls(tmp_path) is None  # no TCP relay: no user certificate issued
    relay_flags(ca, tcp=True)
    tls = lab_client_tls(tmp_path)
    assert tls is not None and tls.ca_file == ca.ca_cert


async def _check(port: int, creds: grpc.ChannelCredentials, name: str) -> str:
    options = [("grpc.ssl_target_name_override", name)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as ch:
        try:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.aio.AioRpcError as err:
            return err.code().name
    return "OK"


@pytest.mark.timeout(60)
def test_mtls_with_grpc(tmp_path: Path) -> None:
    ca = LabCA(tmp_path / "lab", cluster="c")
    other = LabCA(tmp_path / "other", cluster="c")
    server_pair = ca.node_server("n")
    name = node_server_name("n", "c")

    def creds(client: LabCA | None) -> grpc.ChannelCredentials:
        pair = client.relay_client() if client else None
        return grpc.ssl_channel_credentials(
            ca.ca_cert.read_bytes(),
            pair.key.read_bytes() if pair else None,
            pair.cert.read_bytes() if pair else None,
        )

    async def run() -> list[str]:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
        port = server.add_secure_port(
            "127.0.0.1:0",
            grpc.ssl_server_credentials(
                [(server_pair.key.read_bytes(), server_pair.cert.read_bytes())],
                root_certificates=ca.ca_cert.read_bytes(),
                require_client_auth=True,
            ),
        )
        await server.start()
        try:
            return [
                await _check(port, creds(ca), name),
                await _check(port, creds(None), name),
                await _check(port, creds(other), name),
                await _check(port, creds(ca), "wrong.c.hubble-grpc.cilium.io"),
            ]
        finally:
            await server.stop(None)

    assert asyncio.run(run()) == ["OK", "UNAVAILABLE", "UNAVAILABLE", "UNAVAILABLE"]


def test_router_addresses() -> None:
    assert router_addresses(["10.1.2.0/24"]) == ("10.1.2.1",)
    assert ipaddress.ip_address(router_addresses(["fd00::/120"])[0]) == ipaddress.ip_address(
        "fd00::1"
    )


def test_the_api_servers_certificate_names_loopback_and_the_lab_network(tmp_path: Path) -> None:
    server, _ = controlplane._certificates(LabCA(tmp_path, "lab"), ["172.18.0.1", "fc00::1"])
    dns, ips = _sans(_load(server.cert))
    assert "kubernetes.default.svc" in dns
    assert sorted(ips) == sorted(["127.0.0.1", "::1", "172.18.0.1", "fc00::1"])
