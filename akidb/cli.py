"""akidb serve | migrate | models | keys | backup | restore | import | export."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from akidb.config import Settings, load_settings
from akidb.errors import ConfigError
from akidb.tools.arguments import add_parsers as add_tool_parsers


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="akidb", description="AkiDB gateway: vector database with built-in embeddings"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--config", help="akidb.toml or akidb.yaml (default: ./akidb.toml if present)")
        sub.add_argument("--data-dir", help="folder for the database and the indexes (default ./data)")
        return sub

    serve = with_config(commands.add_parser("serve", help="run the HTTP server"))
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    with_config(commands.add_parser("migrate", help="apply database migrations and exit"))
    models = with_config(commands.add_parser("models", help="list the model registry and what is available here"))
    models_commands = models.add_subparsers(dest="models_command")
    pull = models_commands.add_parser("pull", help="download a model into the Hugging Face cache (needs network)")
    pull.add_argument("model_id")
    keys = commands.add_parser("keys", help="manage API keys in the database (for operators)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = with_config(keys_commands.add_parser("create", help="make a key and print it (the only time it is shown)"))
    create.add_argument("--name", required=True)
    create.add_argument("--role", required=True, choices=["read", "write", "admin"])
    create.add_argument("--collections", help="comma-separated collection names or globs (default: all)")
    create.add_argument("--expires-in", help="lifetime such as 3600s, 90m, 12h or 30d (default: never)")
    with_config(keys_commands.add_parser("list", help="list keys (never their secrets)"))
    revoke = with_config(
        keys_commands.add_parser("revoke", help="revoke a key by id; every server refuses it within a second")
    )
    revoke.add_argument("key_id")
    backup = with_config(
        commands.add_parser("backup", help="copy a SQLite database, consistently, while a server may be running")
    )
    backup.add_argument("dest", help="a new file, or a folder to hold akidb.sqlite3; the indexes are left out")
    restore = with_config(
        commands.add_parser("restore", help="put a backup into an empty data directory (indexes rebuild on start)")
    )
    restore.add_argument("src", help="a file written by akidb backup")
    add_tool_parsers(commands)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {
        "server": {"host": getattr(args, "host", None), "port": getattr(args, "port", None)},
        "storage": {"data_dir": args.data_dir},
    }
    return load_settings(args.config, overrides=overrides)


def _prepare_data_dir(settings: Settings) -> None:
    """Create the data folder now, so a bad path is one clear line rather than a traceback at start-up."""
    data_dir = Path(settings.storage.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"config: `storage.data_dir` {data_dir} cannot be used as a folder ({exc.strerror})") from exc


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unsafe_start(settings: Settings) -> str | None:
    """Why serving as configured would expose every collection to anyone, or None."""
    auth, host = settings.auth, settings.server.host
    if auth.enabled or auth.allow_anonymous or _is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} with auth off (anyone who reaches the port could read and change every "
        "collection): turn it on with AKIDB_AUTH_ENABLED=true and AKIDB_AUTH_ADMIN_KEY=<key> ([auth] in "
        "akidb.toml), or accept the risk with auth.allow_anonymous = true"
    )


def _serve(settings: Settings) -> int:
    import uvicorn

    from akidb.gateway.app import create_app
    from akidb.gateway.runtime import Runtime
    from akidb.storage.db import DatabaseInUse, claim_storage, migrate

    problem = _unsafe_start(settings)
    if problem:
        print(f"akidb: {problem}", file=sys.stderr)
        return 2
    try:
        claims = claim_storage(settings.storage.resolved_url, settings.storage.index_dir)  # held until exit
    except DatabaseInUse as exc:
        print(f"akidb: {exc}", file=sys.stderr)
        return 2
    runtime = Runtime.build(settings)
    if settings.auth.enabled:
        migrate(runtime.store.engine)
        if not runtime.keys.has_usable_key():
            print(
                "akidb: auth is on but no key can be used: set auth.admin_key (AKIDB_AUTH_ADMIN_KEY, the key or "
                "sha256:<hex> of it), or make one with `akidb keys create --name admin --role admin`",
                file=sys.stderr,
            )
            return 2
    tls = settings.server.tls_cert_file
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, runtime),
            host=settings.server.host,
            port=settings.server.port,
            log_level=settings.server.log_level,
            access_log=settings.server.access_log,
            timeout_graceful_shutdown=10,
            ssl_certfile=tls or None,
            ssl_keyfile=settings.server.tls_key_file or None,
        )
    )

    def stop() -> None:
        server.should_exit = True

    runtime.readiness.stop_server = stop
    try:
        server.run()
    finally:
        for claim in claims:
            claim.close()
    if runtime.readiness.fatal:
        print(f"akidb: {runtime.readiness.fatal}", file=sys.stderr)
        return 1
    return 0


def _migrate(settings: Settings) -> None:
    from akidb.storage.db import create_db_engine, migrate

    engine = create_db_engine(settings.storage.resolved_url)
    migrate(engine)
    engine.dispose()
    print(f"database at {settings.storage.resolved_url} is up to date")


def _models(settings: Settings, args: argparse.Namespace) -> None:
    from akidb.embedding.registry import registry_from_settings
    from akidb.embedding.sources import download_model, find_model_files

    registry = registry_from_settings(settings.embedding)
    if args.models_command == "pull":
        print(f"{args.model_id}: {download_model(registry.get(args.model_id))}")
        return
    print(f"{'id':<24} {'dim':>5} {'pooling':<11} {'default':<8} local files")
    for spec in registry:
        path = find_model_files(spec, settings.embedding.model_dir)
        default = "yes" if spec.id == settings.embedding.model else ""
        print(f"{spec.id:<24} {spec.dimension:>5} {spec.pooling:<11} {default:<8} {path or '-'}")


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    match = _DURATION_RE.match(text.strip())
    if not match:
        raise ConfigError(f"--expires-in: '{text}' is not a duration such as 3600s, 90m, 12h or 30d")
    return datetime.now(UTC) + timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from akidb.auth.service import KeyService
    from akidb.errors import AkidbError
    from akidb.storage.db import create_db_engine, migrate
    from akidb.storage.keys import KeyStore

    engine = create_db_engine(settings.storage.resolved_url)
    try:
        migrate(engine)
        keys = KeyService(KeyStore(engine))
        if args.keys_command == "create":
            scope = [item.strip() for item in args.collections.split(",")] if args.collections else None
            created = keys.create(
                name=args.name, role=args.role, collections=scope, expires_at=_expiry(args.expires_in)
            )
            print(f"id: {created.record.id}")
            print(f"key: {created.key}")
            print("(the key is shown this once; only its hash is stored)", file=sys.stderr)
        elif args.keys_command == "list":
            print(f"{'id':<16} {'name':<24} {'role':<6} {'collections':<24} {'expires_at':<26} revoked_at")
            for record in keys.list():
                shown = ",".join(record.collections) if record.collections is not None else "*"
                expires = record.expires_at.isoformat() if record.expires_at else "-"
                revoked = record.revoked_at.isoformat() if record.revoked_at else "-"
                print(f"{record.id:<16} {record.name:<24} {record.role:<6} {shown:<24} {expires:<26} {revoked}")
        else:
            record = keys.revoke(args.key_id)
            print(f"revoked {record.id} ({record.name})")
    except AkidbError as exc:
        print(f"akidb: {exc.detail}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    return 0


def _backup_or_restore(settings: Settings, args: argparse.Namespace) -> int:
    from akidb.storage.backup import BackupError, backup, restore

    storage = settings.storage
    try:
        if args.command == "backup":
            summary = backup(storage.resolved_url, Path(args.dest))
        else:
            summary = restore(Path(args.src), storage.resolved_url, Path(storage.data_dir), storage.index_dir)
    except BackupError as exc:
        print(f"akidb: {exc}", file=sys.stderr)
        return 2
    verb = "backed up to" if args.command == "backup" else "restored to"
    print(f"{verb} {summary.describe()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in {"import", "export"}:
        # Clients of a server over HTTP: no server settings are read.
        from akidb.tools.commands import run

        return run(args)
    from akidb.auth.keys import valid_admin_key_setting
    from akidb.embedding.registry import registry_from_settings

    try:
        settings = _settings(args)
        registry_from_settings(settings.embedding)
        if settings.auth.admin_key and not valid_admin_key_setting(settings.auth.admin_key):
            raise ConfigError("config: `auth.admin_key` must be at least 16 characters, or sha256:<64 hex digits>")
        if args.command in {"serve", "migrate", "keys"}:
            _prepare_data_dir(settings)
        if args.command == "keys":
            _expiry(getattr(args, "expires_in", None))
    except ConfigError as exc:
        print(f"akidb: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Alembic narrates each migration at INFO; start-up refusals and CLI output stay one line.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "serve":
        return _serve(settings)
    elif args.command == "migrate":
        _migrate(settings)
    elif args.command == "models":
        _models(settings, args)
    elif args.command == "keys":
        return _keys(settings, args)
    elif args.command in {"backup", "restore"}:
        return _backup_or_restore(settings, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
