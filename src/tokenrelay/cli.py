"""``tokenrelay serve`` and ``tokenrelay config check``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tokenrelay.config import ConfigError, Settings, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenrelay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the gateway")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--config", help="TOML config file (or TOKENRELAY_CONFIG)")

    config = commands.add_parser("config", help="work with config files")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file")

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
            return serve_forever(load_settings(args.config, **overrides))
        settings = load_settings(args.file)
    except ConfigError as exc:
        print(f"tokenrelay: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok ({len(settings.models)} models: {', '.join(settings.models)})")
    return 0


def serve_forever(settings: Settings) -> int:
    from tokenrelay.app import create_app
    from tokenrelay.server import GatewayServer, uvicorn_config

    server = GatewayServer(uvicorn_config(create_app(settings), settings, loop="uvloop"))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"tokenrelay is listening on http://{host}:{settings.port}/", flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
