"""The lab's certificate authority: what Cilium's certgen (or cert-manager) does for Hubble.

Cilium serves Hubble's TCP port (:4244) with TLS by default and makes the relay present a client
certificate (mTLS), so a pod that reaches its node's addresses cannot read the node's flows. The
lab plays the installer: at ``lab up`` it creates one CA per lab and issues

* one **server** certificate per node, named as upstream's
  ``<node>.<cluster>.hubble-grpc.cilium.io`` (the name Hubble's peer service announces and the
  relay verifies) plus the node's addresses;
* the **relay's client** certificate (relay → nodes, mTLS);
* when the relay listens on TCP, the **relay's server** certificate (``*.hubble-relay.cilium.io``
  plus the loopback addresses) and a **user client** certificate for ``ciliary hubble``/``hubble``.

Everything lives under ``<lab state dir>/tls/`` (0700, every file 0600: only root reads a key or
may use the client certificate), so ``lab down`` removes it with the lab. Issuing is idempotent: a
file that exists is reused (a restarted agent keeps its certificate), a missing one is issued by
the lab's CA. Keys are ECDSA P-256, certificates valid for a year.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR_NAME = "tls"
VALIDITY = datetime.timedelta(days=365)
HUBBLE_GRPC_DOMAIN = "hubble-grpc.cilium.io"
RELAY_SERVER_NAME = "*.hubble-relay.cilium.io"
"""Upstream's relay server certificate name; clients dialing an address verify the IP SANs."""
RELAY_CLIENT_NAME = "*.hubble-relay.cilium.io"
USER_CLIENT_NAME = "hubble-client.ciliary.io"
USER_CLIENT_STEM = "hubble-client"
"""``<lab dir>/tls/hubble-client.{crt,key}``: what ``ciliary hubble`` presents to a TCP relay."""
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def node_server_name(node: str, cluster: str) -> str:
    """The name a node's Hubble certificate carries and clients verify (upstream's form)."""
    return f"{node}.{cluster}.{HUBBLE_GRPC_DOMAIN}"


@dataclass(frozen=True, slots=True)
class CertPair:
    """A PEM certificate and its PEM key (both 0600)."""

    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Writes ``data`` root-only (0600 from creation on: no window where another user can read
    it), atomically (a reader never sees half a key)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class LabCA:
    """The CA of one lab, rooted at ``<lab dir>/tls``; every method creates what is missing."""

    def __init__(self, lab_dir: Path, cluster: str = "default") -> None:
        """``cluster``: the cluster name the agents run with (the lab's name in a lab)."""
        self.dir = Path(lab_dir) / TLS_DIR_NAME
        self.cluster = cluster

    @property
    def ca_cert(self) -> Path:
        """The trust anchor every client and server of the lab is given."""
        return self.dir / "ca.crt"

    def _ensure_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        self._ensure_dir()
        key_path = self.dir / "ca.key"
        if self.ca_cert.is_file() and key_path.is_file():
            cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an ECDSA key")
            return cert, key
        key = _new_key()
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"ciliary lab CA {self.cluster}"[:64])]
        )
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        _write_private(key_path, _key_pem(key))
        _write_private(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
        return cert, key

    def pair(self, stem: str) -> CertPair:
        """Where the certificate ``stem`` is (issued or not)."""
        return CertPair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        dns_names: tuple[str, ...] = (),
        addresses: tuple[Address, ...] = (),
        organization: str | None = None,
        server: bool,
    ) -> CertPair:
        """The certificate ``stem`` (``<tls dir>/<stem>.{crt,key}``) for ``common_name``, with
        ``dns_names`` and ``addresses`` as SANs (and ``organization``: what Kubernetes reads as
        the client's group), for TLS servers (``server``) or clients; issued by
        the lab's CA unless it exists. Hubble's certificates below and the control plane's
        (``lab/controlplane.py``: the API server's, the admin client's) are all issued here."""
        pair = self.pair(stem)
        ca_cert, ca_key = self._ca()
        if pair.cert.is_file() and pair.key.is_file():
            return pair
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization is not None:
            subject.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in (common_name, *dns_names)]
        names += [x509.IPAddress(a) for a in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write_private(pair.key, _key_pem(key))
        _write_private(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def node_server(self, node: str, addresses: tuple[str, ...] = ()) -> CertPair:
        """The node's Hubble server certificate: upstream's name, the node's addresses and
        loopback (a client inside the node netns dials 127.0.0.1:4244)."""
        ips = tuple(ipaddress.ip_address(a) for a in (*LOOPBACK_ADDRESSES, *addresses))
        return self.issue(
            f"hubble-server-{node}",
            node_server_name(node, self.cluster),
            dns_names=("localhost",),
            addresses=tuple(dict.fromkeys(ips)),
            server=True,
        )

    def relay_client(self) -> CertPair:
        """What the relay presents to the nodes' :4244 (mTLS)."""
        return self.issue("hubble-relay-client", RELAY_CLIENT_NAME, server=False)

    def relay_server(self) -> CertPair:
        """The relay's own TCP listener (loopback only in the lab)."""
        ips = tuple(ipaddress.ip_address(a) for a in LOOPBACK_ADDRESSES)
        return self.issue(
            "hubble-relay-server",
            RELAY_SERVER_NAME,
            dns_names=("localhost",),
            addresses=ips,
            server=True,
        )

    def user_client(self) -> CertPair:
        """The certificate a user's ``ciliary hubble`` / ``hubble`` presents to a TCP relay."""
        return self.issue(USER_CLIENT_STEM, USER_CLIENT_NAME, server=False)


def router_addresses(cidrs: list[str]) -> tuple[str, ...]:
    """A node's own addresses from its pod CIDRs (the router is the first address)."""
    return tuple(str(next(ipaddress.ip_network(c, strict=False).hosts())) for c in cidrs)


def agent_flags(ca: LabCA, node: str, addresses: tuple[str, ...] = ()) -> list[str]:
    """cilium-agent's flags serving :4244 with the node's certificate, requiring a client
    certificate of the lab's CA (mTLS)."""
    pair = ca.node_server(node, addresses)
    return [
        "--hubble-tls-cert-file", str(pair.cert),
        "--hubble-tls-key-file", str(pair.key),
        "--hubble-tls-client-ca-files", str(ca.ca_cert),
    ]  # fmt: skip


def relay_flags(ca: LabCA, *, tcp: bool) -> list[str]:
    """hubble-relay's flags: its client certificate towards the nodes (used for any peer it
    dials over TCP), and with ``tcp`` its own TLS listener requiring client certificates (and
    the user's client certificate, issued for ``ciliary hubble``)."""
    client = ca.relay_client()
    flags = [
        "--tls-hubble-server-ca-files", str(ca.ca_cert),
        "--tls-hubble-client-cert-file", str(client.cert),
        "--tls-hubble-client-key-file", str(client.key),
    ]  # fmt: skip
    if tcp:
        server = ca.relay_server()
        ca.user_client()
        flags += [
            "--tls-relay-server-cert-file", str(server.cert),
            "--tls-relay-server-key-file", str(server.key),
            "--tls-relay-client-ca-files", str(ca.ca_cert),
        ]  # fmt: skip
    return flags


__all__ = [
    "CertPair",
    "LabCA",
    "agent_flags",
    "node_server_name",
    "relay_flags",
    "router_addresses",
]
