"""The ``railgate`` command line: one entry point, a subcommand per job.

Subcommands import what they need lazily, so ``railgate link`` starts without loading ONNX. The
development tools (``models build``, ``hub``, ``link``, ``demo``) live outside the product packages
(``models/``, ``hub/``, ``devtools/``); they are reached only through ``_dev_tool``, and an install
without them (the runtime image) says so instead of failing on an import.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _models_build(args: argparse.Namespace) -> int:
    try:
        tool = _dev_tool("models.build", "models build")
    except ImportError as exc:  # scikit-learn / skl2onnx live in the dev extra
        print(f"railgate models build: {exc.name} is missing: pip install 'railgate[dev]'", file=sys.stderr)
        return 1
    if tool is None:
        return 1
    from railcore.progress import Progress

    names = tuple(n for n in args.models.split(",") if n) or tool.MODEL_NAMES
    progress = Progress("models build", len(names))  # to stderr: stdout keeps the manifest's lines
    try:
        manifest = tool.build_repository(args.repository, names, progress)
    except tool.BuildError as exc:
        progress.close()
        print(f"railgate models build: {exc}", file=sys.stderr)
        return 1
    progress.done(f"{args.repository}")
    for name, entry in manifest["models"].items():
        metrics = " ".join(f"{k}={v}" for k, v in entry["metrics"].items())
        print(f"{name:8s} sha256={entry['sha256'][:16]} {metrics}")
    print(f"wrote {args.repository}/manifest.json")
    return 0


def _dev_tool(module: str, command: str):
    """The dev tool ``module``, or None (with a message) where this install does not ship it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            print(f"railgate {command} is a development tool; this install does not ship it", file=sys.stderr)
            return None
        raise


def _hub(args: argparse.Namespace) -> int:
    tool = _dev_tool("hub.cli", "hub")
    return 1 if tool is None else tool.run(args)


def _serve(args: argparse.Namespace) -> int:
    from gateway.serving import run

    return run(args)


def _edge(args: argparse.Namespace) -> int:
    from edge.server import run

    return run(args)


def _link(args: argparse.Namespace) -> int:
    tool = _dev_tool("devtools.link", "link")
    return 1 if tool is None else tool.run(args)


def _keys_new(args: argparse.Namespace) -> int:
    from gateway.tenants import hash_key, new_key

    key = new_key()
    print(f"API key for {args.tenant} (shown once; give it to the tenant):\n  {key}")
    print("Add its hash to the tenant in the gateway config (the key itself is never stored):")
    where = "admin_keys" if args.admin else f"tenants: - name: {args.tenant} ... keys"
    print(f'  {where}: ["{hash_key(key)}"]')
    return 0


def _keys_signing(args: argparse.Namespace) -> int:
    import os

    from railcore.signing import SigningKey

    key = SigningKey.generate()
    try:  # O_EXCL: never overwrite a key devices may already pin
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"railgate keys signing: cannot create {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_pem())
    print(f"wrote the private key to {args.out} (key id {key.key_id}); in the gateway config:")
    print(f"  artifacts: {{signing_key_file: {args.out}}}")
    print("pin the public key on each device (edge.yaml; keep the old one there during a rotation):")
    print(f'  sync: {{trusted_keys: ["{key.public_text()}"]}}')
    return 0


def _demo(args: argparse.Namespace) -> int:
    tool = _dev_tool("devtools.demo", "demo")
    return 1 if tool is None else tool.run(args)


def _wants(argv: list[str] | None, command: str) -> bool:
    """Whether this command line runs ``command`` (a dev tool's arguments load only then)."""
    return command in (sys.argv[1:] if argv is None else argv)[:1]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="railgate", description="Edge-to-hub inference gateway.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="build the Triton model repository")
    models_commands = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    build = models_commands.add_parser("build", help="train/export the models into a Triton repository")
    build.add_argument("--repository", type=Path, default=Path("models/repository"))
    build.add_argument("--models", default="", help="comma-separated subset (default: all)")
    build.set_defaults(func=_models_build)

    hub = commands.add_parser("hub", help="run a real Triton Inference Server over the repository (dev tool)")
    hub_cli = _dev_tool("hub.cli", "hub") if _wants(argv, "hub") else None
    if hub_cli is not None:
        hub_cli.add_arguments(hub)
    hub.set_defaults(func=_hub)

    from gateway import serving

    serve = commands.add_parser("serve", help="run the gateway (KServe v2 HTTP API)")
    serving.add_arguments(serve)
    serve.set_defaults(func=_serve)

    from edge import server as edge_server

    edge = commands.add_parser("edge", help="run the on-device runtime (KServe v2 for firmware), or `edge sync`")
    edge_server.add_arguments(edge)
    edge.set_defaults(func=_edge)

    link_parser = commands.add_parser("link", help="emulate a long-haul link: a delaying TCP proxy (dev tool)")
    link = _dev_tool("devtools.link", "link") if _wants(argv, "link") else None
    if link is not None:
        link.add_arguments(link_parser)
    link_parser.set_defaults(func=_link)

    keys = commands.add_parser("keys", help="API keys for tenants, the model-signing key")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_new = keys_commands.add_parser("new", help="print a new API key and the hash to put in the config")
    keys_new.add_argument("tenant")
    keys_new.add_argument("--admin", action="store_true", help="an admin key (for /admin/*)")
    keys_new.set_defaults(func=_keys_new)
    signing = keys_commands.add_parser(
        "signing", help="write a new Ed25519 key pair for signed model sync and print the public key"
    )
    signing.add_argument("--out", type=Path, required=True, help="where the private key (PEM) goes; never overwritten")
    signing.set_defaults(func=_keys_signing)

    demo = commands.add_parser(
        "demo", help="the rail's story in a minute: real hubs, gateway, edge, measured (dev tool)"
    )
    demo_tool = _dev_tool("devtools.demo", "demo") if _wants(argv, "demo") else None
    if demo_tool is not None:
        demo_tool.add_arguments(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
