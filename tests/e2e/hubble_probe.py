"""A Hubble client for security tests, run where the attacker would be (a node's netns, a pod,
another user): asks ``observer.Observer/ServerStatus`` and prints ``OK <num_flows>`` or
``FAIL <status code> <details>``; exit code 0 only on OK.

Usage: hubble_probe.py TARGET [--ca FILE | --ca-pem TEXT] [--cert FILE --key FILE]
[--server-name NAME]. Without --ca/--ca-pem the channel is plaintext.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc

from ciliary.hubble.api.observer import observer_pb2, observer_pb2_grpc


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--ca")
    p.add_argument("--ca-pem")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--server-name")
    args = p.parse_args()
    options: list[tuple[str, str]] = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    if args.target.startswith("unix:"):
        options.append(("grpc.default_authority", "localhost"))
    ca = Path(args.ca).read_bytes() if args.ca else (args.ca_pem or "").encode() or None
    if ca is None:
        channel = grpc.insecure_channel(args.target, options=options)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=Path(args.key).read_bytes() if args.key else None,
            certificate_chain=Path(args.cert).read_bytes() if args.cert else None,
        )
        channel = grpc.secure_channel(args.target, creds, options=options)
    try:
        status = observer_pb2_grpc.ObserverStub(channel).ServerStatus(
            observer_pb2.ServerStatusRequest(), timeout=5
        )
    except grpc.RpcError as err:
        code = err.code() if isinstance(err, grpc.Call) else None
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        print(f"FAIL {code.name if code else '?'} {details}")
        return 1
    finally:
        channel.close()
    print(f"OK {status.num_flows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
