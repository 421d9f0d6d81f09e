"""``railgate hub``: run a real Triton hub in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from hub.server import GrpcTLS, Hub, HubConfig, HubError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", type=Path, default=Path("models/repository"))
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=None, help="off unless given")
    parser.add_argument("--metrics-port", type=int, default=None, help="off unless given")
    parser.add_argument("--host", default="127.0.0.1", help="address the hub listens on")
    parser.add_argument("--name", default="hub")
    parser.add_argument("--models", default="", help="comma-separated subset of the repository")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per model")
    parser.add_argument("--grpc-tls-cert", type=Path, default=None, help="TLS on the gRPC port: its certificate")
    parser.add_argument("--grpc-tls-key", type=Path, default=None, help="... and its key")
    parser.add_argument("--grpc-tls-root", type=Path, default=None, help="the CA of clients' certificates")
    parser.add_argument("--grpc-tls-mutual", action="store_true", help="clients must present a certificate")


def run(args: argparse.Namespace) -> int:
    grpc_tls = None
    if args.grpc_tls_cert or args.grpc_tls_key:
        if not (args.grpc_tls_cert and args.grpc_tls_key and args.grpc_port):
            print("railgate hub: --grpc-tls-cert and --grpc-tls-key go together, with --grpc-port", file=sys.stderr)
            return 2
        grpc_tls = GrpcTLS(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_tls_root, args.grpc_tls_mutual)
    config = HubConfig(
        repository=args.repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        name=args.name,
        host=args.host,
        models=tuple(m for m in args.models.split(",") if m),
        intra_op_threads=args.threads,
        grpc_tls=grpc_tls,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    hub = Hub(config)
    try:
        hub.start()
    except HubError as exc:
        print(f"railgate hub: {exc}", file=sys.stderr)
        return 1
    ports = f"http={config.host}:{config.http_port}"
    if config.grpc_port:
        ports += f" grpc{'s' if grpc_tls else ''}={config.host}:{config.grpc_port}"
    if config.metrics_port:
        ports += f" metrics={config.host}:{config.metrics_port}"
    print(f"hub {config.name} ready {ports} models={','.join(hub.models)} in {hub.startup_s:.2f}s", flush=True)
    try:
        while not stop.wait(0.5):
            if hub.process is None or hub.process.poll() is not None:
                code = hub.process.returncode if hub.process else -1
                print(f"railgate hub: tritonserver exited unexpectedly ({code})", file=sys.stderr)
                return 1
    finally:
        hub.stop()
    return 0
