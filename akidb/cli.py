"""akidb serve | migrate | models."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from akidb.config import Settings, load_settings
from akidb.errors import ConfigError


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


def _serve(settings: Settings) -> int:
    import uvicorn

    from akidb.gateway.app import create_app
    from akidb.gateway.runtime import Runtime

    runtime = Runtime.build(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, runtime),
            host=settings.server.host,
            port=settings.server.port,
            log_level=settings.server.log_level,
            access_log=settings.server.access_log,
            timeout_graceful_shutdown=10,
        )
    )

    def stop() -> None:
        server.should_exit = True

    runtime.readiness.stop_server = stop
    server.run()
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
    from akidb.config import build_registry
    from akidb.embedding.sources import download_model, find_model_files

    registry = build_registry(settings.embedding)
    if args.models_command == "pull":
        print(f"{args.model_id}: {download_model(registry.get(args.model_id))}")
        return
    print(f"{'id':<24} {'dim':>5} {'pooling':<11} {'default':<8} local files")
    for spec in registry:
        path = find_model_files(spec, settings.embedding.model_dir)
        default = "yes" if spec.id == settings.embedding.model else ""
        print(f"{spec.id:<24} {spec.dimension:>5} {spec.pooling:<11} {default:<8} {path or '-'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
        if args.command in {"serve", "migrate"}:
            _prepare_data_dir(settings)
    except ConfigError as exc:
        print(f"akidb: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return _serve(settings)
    elif args.command == "migrate":
        _migrate(settings)
    elif args.command == "models":
        _models(settings, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
