"""``tokenrelay serve [--workers N]``, ``config check``, ``db upgrade``, ``check-local`` and
``keys create|list|revoke``."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from tokenrelay.config import ConfigError, Settings, load_settings
from tokenrelay.providers.base import check_models

QUOTA_OPTIONS = ("requests_per_minute", "concurrent_streams", "tokens_per_minute", "tokens_per_day")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenrelay", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the gateway")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--config", help="TOML config file (or TOKENRELAY_CONFIG)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes to serve with (needs redis_url)"
    )
    # A worker of `serve --workers N`: serve on the parent's socket, announcing nothing.
    serve.add_argument("--worker-fd", type=int, help=argparse.SUPPRESS)

    config = commands.add_parser("config", help="work with config files")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a config file")
    check.add_argument("file")

    db = commands.add_parser("db", help="work with the conversation database")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="bring the schema to this version's")
    upgrade.add_argument("--config", help="TOML config file (or TOKENRELAY_CONFIG)")

    local_check = commands.add_parser(
        "check-local", help="check that the local models can generate on this machine"
    )
    local_check.add_argument("--config", help="TOML config file (or TOKENRELAY_CONFIG)")

    add_key_commands(commands)

    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v}
            settings = load_settings(args.config, **overrides)
            check_models(settings.models)
            if args.worker_fd is not None:
                return serve_forever(settings, worker_fd=args.worker_fd)
            from tokenrelay.serving.workers import refusal

            problem = refusal(settings, args.workers) or asyncio.run(_database_problem(settings))
            if problem is not None:
                print(f"tokenrelay: {problem}", file=sys.stderr)
                return 2
            from tokenrelay.auth.bootstrap import RefuseToServe, first_run_key

            try:
                first_key = asyncio.run(first_run_key(settings))
            except RefuseToServe as exc:
                print(f"tokenrelay: {exc}", file=sys.stderr)
                return 2
            if args.workers > 1:
                from tokenrelay.serving.workers import run_workers

                announce(settings, first_key, args.workers)
                passed = [*(f"--{k}={v}" for k, v in overrides.items())]
                return run_workers(settings, args.workers, [*passed, *_config_arg(args)])
            return serve_forever(settings, first_key)
        if args.command == "keys":
            return asyncio.run(keys_command(load_settings(args.config), args))
        if args.command == "check-local":
            return asyncio.run(check_local(load_settings(args.config)))
        if args.command == "db":
            print(asyncio.run(_upgrade_database(load_settings(args.config))))
            return 0
        settings = load_settings(args.file)
        check_models(settings.models)
    except (ConfigError, ValueError) as exc:
        print(f"tokenrelay: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok ({len(settings.models)} models: {', '.join(settings.models)})")
    return 0


async def check_local(settings: Settings) -> int:
    from tokenrelay.providers.local.check import check_local_models, describe_cpu

    failed = False
    for outcome in await check_local_models(settings):
        if outcome.crashed:
            failed = True
            print(
                f"tokenrelay: the llama.cpp build crashes on this CPU: {outcome.problem}\n"
                f"  model {outcome.model}, CPU {describe_cpu()}.\n"
                "  Rebuild it for this machine's kind: `make clean setup` builds it with the\n"
                "  portable flags in the Makefile (LLAMA_CMAKE_ARGS).",
                file=sys.stderr,
            )
        elif outcome.skipped:
            print(f"local model {outcome.model}: not checked: {outcome.problem}")
        elif outcome.problem is not None:
            failed = True
            print(f"tokenrelay: local model {outcome.model}: {outcome.problem}", file=sys.stderr)
        else:
            print(f"local model {outcome.model}: generates on this CPU ({outcome.text!r})")
    return 1 if failed else 0


def serve_forever(
    settings: Settings, first_key: str | None = None, *, worker_fd: int | None = None
) -> int:
    import socket

    from tokenrelay.app import create_app
    from tokenrelay.serving.server import GatewayServer, uvicorn_config

    server = GatewayServer(
        uvicorn_config(create_app(settings), settings, loop="uvloop"),
        send_timeout=settings.streams.send_timeout,
        drain_timeout=settings.server.drain_timeout,
    )
    if worker_fd is None:
        announce(settings, first_key)
        server.run()
    else:
        server.run(sockets=[socket.socket(fileno=worker_fd)])
    # uvicorn returns quietly when the app's startup failed (it has logged why).
    return 0 if server.started else 1


def _config_arg(args: argparse.Namespace) -> list[str]:
    return [] if args.config is None else ["--config", args.config]


def announce(settings: Settings, first_key: str | None, workers: int = 1) -> None:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    with_workers = f" with {workers} workers" if workers > 1 else ""
    print(f"tokenrelay is listening on http://{host}:{settings.port}/{with_workers}", flush=True)
    if first_key is not None:
        print(
            "A first admin key was created. Open this link to start (the key is shown once;\n"
            "the page keeps it in your browser; `tokenrelay keys create` makes more):\n"
            # A fragment, never sent to the server: a query string would be in its access log.
            f"    http://{host}:{settings.port}/#key={first_key}",
            flush=True,
        )
    elif not settings.auth.enabled:
        print("tokenrelay: auth is disabled: anyone who can reach this port can use it")


async def _database_problem(settings: Settings) -> str | None:
    """Why the server must not start on its database, said before uvicorn starts."""
    from tokenrelay.store import SchemaOutdated, Store, database_url

    try:
        store = await Store.open(database_url(settings))
    except SchemaOutdated as exc:
        return str(exc)
    except Exception as exc:
        return f"cannot open the database: {type(exc).__name__}: {exc}"
    await store.close()
    return None


async def _upgrade_database(settings: Settings) -> str:
    from tokenrelay.store import database_url
    from tokenrelay.store.engine import create_engine, display_url
    from tokenrelay.store.schema import current, upgrade

    engine = create_engine(database_url(settings))
    try:
        before = await current(engine)
        await upgrade(engine)
        after = await current(engine)
    finally:
        await engine.dispose()
    if before == after:
        return f"{display_url(engine)}: already at schema revision {after}"
    return f"{display_url(engine)}: upgraded from {before or 'empty'} to schema revision {after}"


def add_key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key (shown once)")
    create.add_argument("--owner", required=True, help="the user the key acts as")
    create.add_argument(
        "--scope",
        action="append",
        choices=["chat", "admin"],
        help="chat (default) or admin (also chat); repeatable",
    )
    create.add_argument("--name", help="a label to recognise the key by")
    create.add_argument("--expires-in", help="lifetime: 90m, 12h, 30d")
    for option in QUOTA_OPTIONS:
        create.add_argument("--" + option.replace("_", "-"), type=int, help="this key's own limit")
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--owner", help="only this user's keys")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = key_commands.add_parser("revoke", help="revoke a key by id or visible prefix")
    revoke.add_argument("key", help="key_… id or tr_… prefix from `keys list`")
    for command in (create, listing, revoke):
        command.add_argument("--config", help="TOML config file (or TOKENRELAY_CONFIG)")


def parse_lifetime(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match is None:
        raise ConfigError(f"--expires-in {text!r}: use a number and s, m, h or d (30d)")
    amount, unit = int(match[1]), match[2]
    return timedelta(seconds=amount * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


async def keys_command(settings: Settings, args: argparse.Namespace) -> int:
    from tokenrelay.auth.authenticator import valid_user_name
    from tokenrelay.auth.keys import issue_key
    from tokenrelay.store import Accounts, SchemaOutdated, Store, database_url

    try:
        store = await Store.open(database_url(settings))
    except SchemaOutdated as exc:
        print(f"tokenrelay: {exc}", file=sys.stderr)
        return 2
    try:
        accounts = Accounts(store)
        if args.keys_command == "create":
            if not valid_user_name(args.owner):
                raise ConfigError("--owner: use printable characters without edge spaces")
            expires = args.expires_in and datetime.now(UTC) + parse_lifetime(args.expires_in)
            limits = {option: getattr(args, option) for option in QUOTA_OPTIONS}
            if any(value is not None and value <= 0 for value in limits.values()):
                raise ConfigError("limits must be positive")
            record, secret = await issue_key(
                accounts,
                args.owner,
                args.scope or ["chat"],
                name=args.name,
                expires_at=expires or None,
                limits=limits,
            )
            print(secret)
            print(
                f"{record.id} for {record.owner} ({' '.join(record.scopes)}): "
                "this is the only time the key is shown",
                file=sys.stderr,
            )
            return 0
        if args.keys_command == "list":
            for key in await accounts.list_keys(owner=args.owner, include_revoked=args.all):
                state = "revoked" if key.revoked_at else "active"
                if key.revoked_at is None and not key.usable(datetime.now(UTC)):
                    state = "expired"
                expires = key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "-"
                print(
                    f"{key.id}  {key.prefix}…  {key.owner}  {','.join(key.scopes)}  "
                    f"{state}  expires {expires}  {key.name or ''}".rstrip()
                )
            return 0
        revoked = await accounts.revoke_key(args.key, by_prefix=True)
        if revoked is None:
            print(f"tokenrelay: no single key matches {args.key!r}", file=sys.stderr)
            return 1
        print(f"revoked {revoked.id} ({revoked.prefix}…, {revoked.owner})")
        return 0
    finally:
        await store.close()


if __name__ == "__main__":
    sys.exit(main())
