from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from akidb.config import load_settings
from akidb.embedding.registry import registry_from_settings
from akidb.errors import ConfigError


def load_and_check(*args: Any, **kwargs: Any) -> None:
    """What `akidb serve` does with a config: load the settings, then build the registry they name."""
    registry_from_settings(load_settings(*args, **kwargs).embedding)


def test_defaults_without_file_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.embedding.provider == "auto"
    assert settings.embedding.model == "all-MiniLM-L6-v2"
    assert settings.storage.resolved_url.endswith("data/akidb.sqlite3")


def test_toml_file_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "akidb.toml"
    config.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[embedding]\nbatch_size = 8\n')
    settings = load_settings(config, environ={"AKIDB_SERVER_PORT": "9100", "AKIDB_EMBEDDING_BATCH_SIZE": "16"})
    assert settings.server.port == 9100  # env beats file
    assert settings.server.host == "0.0.0.0"  # file beats default
    assert settings.embedding.batch_size == 16
    flags = load_settings(config, environ={"AKIDB_SERVER_PORT": "9100"}, overrides={"server": {"port": 9200}})
    assert flags.server.port == 9200  # CLI flag beats env


def test_yaml_file(tmp_path: Path) -> None:
    config = tmp_path / "akidb.yaml"
    config.write_text("storage:\n  data_dir: /srv/akidb\nembedding:\n  provider: mock\n")
    settings = load_settings(config, environ={})
    assert settings.storage.data_dir == "/srv/akidb"
    assert settings.embedding.provider == "mock"


def test_mode_is_a_synonym_for_provider(tmp_path: Path) -> None:
    settings = load_settings(environ={"AKIDB_EMBEDDING_MODE": "user_provided"}, config_file=None)
    assert settings.embedding.provider == "user_provided"


def test_settings_are_frozen() -> None:
    settings = load_settings(environ={})
    with pytest.raises(AttributeError):
        settings.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nprot = 1\n", "prot"),
        ("[server]\nport = 'eighty'\n", "server.port"),
        ("[embedings]\nmodel = 'x'\n", "embedings"),
        ("[embedding]\nprovider = 'tensorflow'\n", "embedding.provider"),
        ("[embedding]\nmodel = 'no-such-model'\n", "embedding.model"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "akidb.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_and_check(config, environ={})
    message = str(info.value)
    assert named in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"AKIDB_SERVER_PORT": "http"}, "server.port"),
        ({"AKIDB_SERVER_NOPE": "1"}, "nope"),
        ({"AKIDB_CACHE_SIZE": "1"}, "AKIDB_CACHE_SIZE"),
        ({"AKIDB_EMBEDDING_MODEL": "gpt-embed"}, "embedding.model"),
        ({"AKIDB_EMBEDDING_MODE": "tensorflow"}, "embedding.provider"),
    ],
)
def test_bad_environment_names_the_key(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_and_check(environ=environ)
    assert named in str(info.value)


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_malformed_toml_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "akidb.toml"
    config.write_text("[server\nport = 1")
    with pytest.raises(ConfigError, match=r"akidb\.toml"):
        load_settings(config, environ={})


def test_cli_reports_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from akidb.cli import main

    config = tmp_path / "akidb.toml"
    config.write_text("[server]\nport = 'x'\n")
    assert main(["migrate", "--config", str(config), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "server.port" in err


def test_cli_reports_unusable_data_dir_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from akidb.cli import main

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main(["migrate", "--data-dir", str(not_a_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "storage.data_dir" in err
    assert err.count("\n") == 0


def test_provider_order_and_fallback(tmp_path: Path) -> None:
    settings = load_settings(environ={"AKIDB_EMBEDDING_PROVIDER": "mlx"})
    assert settings.embedding.provider_order() == ["mlx", "onnx", "torch"]
    config = tmp_path / "akidb.toml"
    config.write_text('[embedding]\nprovider = "onnx"\nfallback_order = ["mlx", "onnx"]\n')
    assert load_settings(config, environ={}).embedding.provider_order() == ["onnx", "mlx"]
    off = load_settings(config, environ={"AKIDB_EMBEDDING_FALLBACK": "false"})
    assert off.embedding.provider_order() == ["onnx"]


def test_user_registered_model_joins_the_registry(tmp_path: Path) -> None:
    from akidb.embedding.registry import registry_from_settings

    config = tmp_path / "akidb.toml"
    config.write_text(
        "[embedding]\n"
        'model = "my-encoder"\n'
        "[[embedding.models]]\n"
        'id = "my-encoder"\n'
        f'path = "{tmp_path / "my-encoder"}"\n'
        "dimension = 256\n"
        'pooling = "cls"\n'
        'query_prefix = "q: "\n'
        "matryoshka_dimensions = [64, 128]\n"
    )
    settings = load_settings(config, environ={})
    registry = registry_from_settings(settings.embedding)
    spec = registry.get("my-encoder")
    assert (spec.dimension, spec.pooling, spec.query_prefix) == (256, "cls", "q: ")
    assert spec.local_path == str(tmp_path / "my-encoder")
    assert spec.supports_dimension(128)
    assert not spec.supports_dimension(100)
    assert "all-MiniLM-L6-v2" in registry  # the built-ins stay


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[embedding]\nmax_loaded_models = 0\n", "embedding.max_loaded_models"),
        ("[embedding]\nmax_model_memory_mb = -1\n", "embedding.max_model_memory_mb"),
        ('[embedding]\nfallback_order = ["mock"]\n', "embedding.fallback_order"),
        ('[embedding]\nfallback_order = ["tensorflow"]\n', "embedding.fallback_order"),
        ('[embedding]\npreload_models = ["nope"]\n', "embedding.preload_models[0]"),
        ('[[embedding.models]]\nid = "x"\ndimension = 8\n', "embedding.models[0]"),
        ('[[embedding.models]]\nid = "all-MiniLM-L6-v2"\ndimension = 8\npath = "/m"\n', "embedding.models[0]"),
        ('[[embedding.models]]\nid = "x"\npath = "/m"\n', "dimension"),
        ('[[embedding.models]]\nid = "x"\ndimension = 8\npath = "/m"\npooling = "max"\n', "pooling"),
    ],
)
def test_bad_model_settings_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "akidb.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_and_check(config, environ={})
    assert named in str(info.value)
