"""``ping``: ICMP and ICMPv6 echo over raw sockets, printed the way iputils' ping prints it.

Policy can allow or deny ICMP separately from TCP/UDP, so the lab needs a real ping inside pods
that works without the ``ping`` binary and without ping sockets (``net.ipv4.ping_group_range``):
workloads run as root, so raw sockets it is. Replies are matched on identifier, sequence number,
source address and payload; ICMP errors about our requests (unreachable, time exceeded) are
reported like iputils does. Exit 0 when every request was answered (at least one with
``--allow-loss``), else 1 with a one-line reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import select
import socket
import struct
import time

from ciliary.workload.common import describe_error, fail, say, strip_brackets

_PROG = "ping"
PAYLOAD_SIZE = 56

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129

_ICMP_ERRORS = {
    (3, 0): "Destination Net Unreachable",
    (3, 1): "Destination Host Unreachable",
    (3, 2): "Destination Protocol Unreachable",
    (3, 3): "Destination Port Unreachable",
    (3, 4): "Frag needed and DF set",
    (3, 9): "Destination Net Prohibited",
    (3, 10): "Destination Host Prohibited",
    (3, 13): "Communication administratively prohibited",
    (11, 0): "Time to live exceeded",
    (11, 1): "Frag reassembly time exceeded",
}
_ICMP6_ERRORS = {
    (1, 0): "Destination unreachable: No route",
    (1, 1): "Destination unreachable: Administratively prohibited",
    (1, 3): "Destination unreachable: Address unreachable",
    (1, 4): "Destination unreachable: Port unreachable",
    (2, 0): "Packet too big",
    (3, 0): "Time exceeded: Hop limit",
    (3, 1): "Time exceeded: Defragmentation failure",
}


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ipv6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP(v6) echo request; for ICMPv6 the kernel fills the checksum in (pseudo-header)."""
    kind = ICMP6_ECHO_REQUEST if ipv6 else ICMP_ECHO_REQUEST
    header = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if not ipv6:
        header = struct.pack("!BBHHH", kind, 0, checksum(header + payload), ident, seq)
    return header + payload


@dataclasses.dataclass(frozen=True)
class Answer:
    """Something received about one of our requests: a reply, or an ICMP error."""

    source: str
    seq: int
    size: int  # ICMP bytes (header + payload), what iputils prints
    ttl: int | None
    payload: bytes = b""
    error: str | None = None


def parse_icmp(icmp: bytes, source: str, ttl: int | None, ipv6: bool, ident: int) -> Answer | None:
    """Our echo reply or an ICMP error quoting our request, else None (not ours)."""
    if len(icmp) < 8:
        return None
    kind, code, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
    if kind == (ICMP6_ECHO_REPLY if ipv6 else ICMP_ECHO_REPLY):
        if rid != ident:
            return None
        return Answer(source, rseq, len(icmp), ttl, payload=icmp[8:])
    errors = _ICMP6_ERRORS if ipv6 else _ICMP_ERRORS
    if not any(k == kind for k, _ in errors):
        return None
    quoted = icmp[8:]
    if ipv6:
        if len(quoted) < 48 or quoted[6] != socket.IPPROTO_ICMPV6:
            return None
        inner = quoted[40:48]
    else:
        if len(quoted) < 20 or quoted[9] != socket.IPPROTO_ICMP:
            return None
        ihl = (quoted[0] & 0x0F) * 4
        inner = quoted[ihl : ihl + 8]
    if len(inner) < 8:
        return None
    itype, _, _, iid, iseq = struct.unpack("!BBHHH", inner)
    if itype != (ICMP6_ECHO_REQUEST if ipv6 else ICMP_ECHO_REQUEST) or iid != ident:
        return None
    text = errors.get((kind, code), f"ICMP error type {kind} code {code}")
    return Answer(source, iseq, len(icmp), ttl, error=text)


def _receive(sock: socket.socket, ipv6: bool, ident: int) -> Answer | None:
    if ipv6:
        data, ancillary, _, address = sock.recvmsg(65535, socket.CMSG_SPACE(4))
        hops: int | None = None
        for level, kind, value in ancillary:
            if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
                hops = int.from_bytes(value[:4], "little" if struct.pack("=H", 1)[0] else "big")
        return parse_icmp(data, str(address[0]).partition("%")[0], hops, True, ident)
    packet, _ = sock.recvfrom(65535)
    if len(packet) < 20:
        return None
    ihl = (packet[0] & 0x0F) * 4
    source = socket.inet_ntop(socket.AF_INET, packet[12:16])
    return parse_icmp(packet[ihl:], source, packet[8], False, ident)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("ping", help="ICMP/ICMPv6 echo (raw sockets), iputils-style output")
    parser.add_argument("host", help="address or name (the family follows the address)")
    parser.add_argument("-c", dest="count", type=int, default=3, help="requests to send (3)")
    parser.add_argument(
        "-i", dest="interval", type=float, default=1.0, help="seconds between requests (1)"
    )
    parser.add_argument(
        "-W", dest="timeout", type=float, default=2.0, help="seconds to wait for each reply (2)"
    )
    parser.add_argument(
        "--allow-loss", action="store_true", help="succeed if at least one reply came back"
    )
    parser.set_defaults(run=run)


@dataclasses.dataclass
class _Tally:
    transmitted: int = 0
    received: int = 0
    errors: int = 0
    rtts: list[float] = dataclasses.field(default_factory=list)


def _wait_for(
    sock: socket.socket,
    *,
    target: str,
    ident: int,
    seq: int,
    payload: bytes,
    deadline: float,
    sent_at: float,
    tally: _Tally,
) -> None:
    ipv6 = sock.family == socket.AF_INET6
    while (remaining := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], remaining)
        if not readable:
            break
        answer = _receive(sock, ipv6, ident)
        if answer is None or answer.seq != seq:
            continue  # someone else's ICMP, or a late answer to an earlier request
        if answer.error is not None:
            tally.errors += 1
            say(f"From {answer.source} icmp_seq={seq} {answer.error}")
            return
        if answer.source != target:
            continue
        if answer.payload != payload:
            tally.errors += 1
            say(f"From {answer.source} icmp_seq={seq} reply with wrong data")
            return
        rtt_ms = (time.monotonic() - sent_at) * 1000
        tally.received += 1
        tally.rtts.append(rtt_ms)
        ttl = f" ttl={answer.ttl}" if answer.ttl is not None else ""
        say(f"{answer.size} bytes from {answer.source}: icmp_seq={seq}{ttl} time={rtt_ms:.3f} ms")
        return
    say(f"no answer yet for icmp_seq={seq}")


def run(args: argparse.Namespace) -> int:
    if args.count < 1 or args.interval < 0 or args.timeout <= 0:
        return fail(_PROG, "-c must be at least 1, -i not negative and -W positive")
    host = strip_brackets(args.host)
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, None, type=socket.SOCK_RAW)[0]
    except OSError as exc:
        return fail(_PROG, f"{args.host}: {describe_error(exc)}")
    ipv6 = family == socket.AF_INET6
    target = str(sockaddr[0]).partition("%")[0]
    try:
        sock = socket.socket(
            family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if ipv6 else socket.IPPROTO_ICMP
        )
    except PermissionError:
        return fail(_PROG, "raw sockets need root (CAP_NET_RAW)")
    except OSError as exc:
        return fail(_PROG, f"cannot open a raw ICMP socket: {describe_error(exc)}")
    ident = random.getrandbits(16)
    tally = _Tally()
    with sock:
        if ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
            say(f"PING {args.host}({target}) {PAYLOAD_SIZE} data bytes")
        else:
            say(f"PING {args.host} ({target}) {PAYLOAD_SIZE}({PAYLOAD_SIZE + 28}) bytes of data.")
        start = time.monotonic()
        for seq in range(1, args.count + 1):
            wire_seq = seq & 0xFFFF
            payload = struct.pack("!Q", random.getrandbits(64)) + bytes(
                (i + 8) & 0xFF for i in range(PAYLOAD_SIZE - 8)
            )
            sent_at = time.monotonic()
            try:
                sock.sendto(echo_request(ipv6, ident, wire_seq, payload), sockaddr)
            except OSError as exc:
                tally.transmitted += 1
                tally.errors += 1
                say(f"ping: sendmsg: {describe_error(exc)}")
            else:
                tally.transmitted += 1
                deadline = sent_at + args.timeout
                _wait_for(
                    sock,
                    target=target,
                    ident=ident,
                    seq=wire_seq,
                    payload=payload,
                    deadline=deadline,
                    sent_at=sent_at,
                    tally=tally,
                )
            if seq < args.count:
                delay = sent_at + args.interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        elapsed_ms = (time.monotonic() - start) * 1000
    loss = 100 * (tally.transmitted - tally.received) // tally.transmitted
    errors = f", +{tally.errors} errors" if tally.errors else ""
    say("")
    say(f"--- {args.host} ping statistics ---")
    say(
        f"{tally.transmitted} packets transmitted, {tally.received} received{errors},"
        f" {loss}% packet loss, time {elapsed_ms:.0f}ms"
    )
    if tally.rtts:
        mean = sum(tally.rtts) / len(tally.rtts)
        mdev = math.sqrt(max(sum(r * r for r in tally.rtts) / len(tally.rtts) - mean * mean, 0))
        say(
            f"rtt min/avg/max/mdev = {min(tally.rtts):.3f}/{mean:.3f}/{max(tally.rtts):.3f}"
            f"/{mdev:.3f} ms"
        )
    if tally.received == tally.transmitted or (args.allow_loss and tally.received > 0):
        return 0
    return fail(_PROG, f"{tally.received}/{tally.transmitted} replies from {args.host} ({target})")
