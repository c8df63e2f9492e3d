"""The Docker image's recipe, proven without a container engine.

deploy/docker/Dockerfile builds its CPU image with deploy/docker/recipe.py; this test runs the same steps,
in the same order, into a fresh temporary folder: akidb's wheel, the pinned runtime set, a fresh venv filled
from wheels only (--no-index --no-deps), the default model's ONNX graphs exported by akidb's own code, the
runtime check and the size report. The builder is this checkout's .venv (torch, akidb[onnx]) rather than a
fresh one; the runtime venv is new. Third-party wheels are kept in .cache/docker-recipe-wheels between runs
(the first run fetches them from the index, with pip's cache).

Then `akidb serve` runs FROM THAT VENV with the runtime stage's own ENV lines (paths relocated into the
temporary folder, 127.0.0.1, a free port, an admin key), as the image would run it, and must serve: ready,
the HEALTHCHECK command passes, and its vector for a text matches the in-repo server's.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from akidb.config import load_settings
from tests.e2e.conftest import REPO_ROOT, AkidbServer, free_port, stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
RECIPE = REPO_ROOT / "deploy" / "docker" / "recipe.py"
WHEELHOUSE = REPO_ROOT / ".cache" / "docker-recipe-wheels"
STEP_TIMEOUT_S = 600
READY_TIMEOUT_S = 90.0
ADMIN_KEY = "docker-recipe-test-admin-key-0123456789"
TEXT = "AkiDB is a RAM-first vector database"


# --- the Dockerfile, read as data --------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str, str]]:
    """(stage, INSTRUCTION, arguments) for every instruction, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if pending or line:
            logical.append(pending + line)
        pending = ""
    stage, out = "", []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else words[0]
        out.append((stage, keyword, rest.strip()))
    return out


def stage_env(stage: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for where, keyword, rest in dockerfile_instructions():
        if where == stage and keyword == "ENV":
            for word in shlex.split(rest):
                key, sep, value = word.partition("=")
                assert sep, f"ENV {rest!r}: use the KEY=value form"
                env[key] = value
    return env


def stage_json_command(stage: str, keyword: str) -> list[str]:
    """The exec-form (JSON) command of ENTRYPOINT, CMD or HEALTHCHECK ... CMD in a stage."""
    for where, found, rest in dockerfile_instructions():
        if where == stage and found == keyword:
            command: list[str] = json.loads(rest[rest.index("CMD") + 3 :] if keyword == "HEALTHCHECK" else rest)
            return command
    raise AssertionError(f"no {keyword} in stage {stage}")


def relocate(value: str, mapping: dict[str, Path]) -> str:
    """Image paths in a (colon-separated) value, moved into the test's folder; $PATH from this process."""
    parts = []
    for part in value.split(":"):
        for image_path, here in sorted(mapping.items(), key=lambda item: -len(item[0])):
            if part == image_path or part.startswith(image_path + "/"):
                part = str(here) + part[len(image_path) :]
                break
        parts.append(os.environ.get("PATH", "") if part == "$PATH" else part)
    return ":".join(parts)


def test_the_images_akidb_settings_are_valid_and_secure_by_default() -> None:
    """An unknown AKIDB_* variable stops `akidb serve`; each stage's must load, with auth on."""
    for stage in ("runtime", "cuda"):
        env = stage_env(stage)
        settings = load_settings(environ={key: value for key, value in env.items() if key.startswith("AKIDB_")})
        assert settings.auth.enabled, stage
        assert not settings.auth.allow_anonymous, stage
        assert (settings.server.host, settings.server.port) == ("0.0.0.0", 8080), stage
        assert settings.storage.data_dir == "/data", stage
        assert settings.embedding.cache_dir == "/opt/akidb-cache", stage
        assert env["HF_HUB_OFFLINE"] == "1", stage
        assert stage_json_command(stage, "ENTRYPOINT") + stage_json_command(stage, "CMD") == ["akidb", "serve"]
    assert stage_env("runtime")["AKIDB_EMBEDDING_PROVIDER"] == "onnx"
    users = [rest for where, keyword, rest in dockerfile_instructions() if keyword == "USER"]
    assert users == ["10001:10001", "10001:10001"]


# --- the recipe, run into a fresh folder -------------------------------------------------------------


@dataclass(frozen=True)
class Baked:
    root: Path
    venv: Path
    cache: Path
    size: dict[str, Any]
    seconds: dict[str, float]


def _step(root: Path, *args: str | Path) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AKIDB_") and key != "PYTHONPATH"}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(RECIPE), *map(str, args)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    if done.returncode != 0:
        pytest.fail(f"recipe.py {args[0]} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    print(f"recipe.py {args[0]}: {time.monotonic() - started:.1f} s")
    return done.stdout


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> Baked:
    """What the builder stage leaves for the runtime stage, made by the Dockerfile's steps in its order."""
    root = tmp_path_factory.mktemp("docker-recipe")
    wheels, requirements, venv, cache = root / "wheels", root / "runtime.txt", root / "opt-akidb", root / "cache"
    seconds: dict[str, float] = {}
    steps: list[tuple[str, list[str | Path]]] = [
        ("build-wheel", [REPO_ROOT, wheels]),
        ("requirements", [wheels, requirements]),
        ("fetch-wheels", [requirements, WHEELHOUSE]),
        ("install-runtime", [venv, requirements, WHEELHOUSE, wheels]),
        ("export-model", [cache]),
        ("check-runtime", [venv, cache]),
        ("size-report", [venv, cache]),
    ]
    output = ""
    for name, args in steps:
        started = time.monotonic()
        output = _step(root, name, *args)
        seconds[name] = round(time.monotonic() - started, 1)
    size = json.loads(output.rsplit("size-report: ", 1)[1])
    return Baked(root, venv, cache, size, seconds)


def test_the_runtime_venv_has_no_torch(baked: Baked, capsys: pytest.CaptureFixture[str]) -> None:
    python = str(baked.venv / "bin" / "python")
    for module in ("torch", "transformers", "sentence_transformers", "onnx"):
        done = subprocess.run([python, "-I", "-c", f"import {module}"], cwd=baked.root, capture_output=True, text=True)
        assert f"ModuleNotFoundError: No module named '{module}'" in done.stderr, (module, done.stderr)
    assert not (baked.venv / "bin" / "pip").exists(), "the runtime venv should carry no pip"
    assert baked.size["torch_in_runtime_venv"] is False
    with capsys.disabled():
        print(f"\ndocker recipe: steps {baked.seconds}")
        print(f"docker recipe: size report {json.dumps(baked.size)}")


# --- serving from the fresh venv as the image would ---------------------------------------------------


def _image_env(baked: Baked, port: int, admin_key: str | None) -> dict[str, str]:
    """The runtime stage's ENV, paths moved into the test folder; a container's bare environment otherwise."""
    mapping = {
        "/opt/akidb": baked.venv,
        "/opt/akidb-cache": baked.cache,
        "/data": baked.root / "data",
        "/tmp": baked.root / "tmpfs",
    }
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(baked.root / "nonexistent"), "LANG": "C.UTF-8"}
    env.update({key: relocate(value, mapping) for key, value in stage_env("runtime").items()})
    env.update(AKIDB_SERVER_HOST="127.0.0.1", AKIDB_SERVER_PORT=str(port))
    if admin_key is not None:
        env["AKIDB_AUTH_ADMIN_KEY"] = admin_key
    for folder in (baked.root / "data", baked.root / "tmpfs"):
        folder.mkdir(exist_ok=True)
    return env


def _image_command(env: dict[str, str], stage_command: list[str]) -> list[str]:
    executable = shutil.which(stage_command[0], path=env["PATH"])
    assert executable is not None, stage_command
    return [executable, *stage_command[1:]]


def _snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for root in roots
        for path in root.rglob("*")
        if path.is_file()
    }


@dataclass
class ImageProcess:
    process: subprocess.Popen[bytes]
    log: Path
    port: int
    # The runtime venv's and the baked cache's files before the server started.
    image_files: dict[str, tuple[int, int]]

    def tail(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-5000:]


@pytest.fixture(scope="module")
def image_server(baked: Baked) -> Iterator[ImageProcess]:
    port = free_port()
    env = _image_env(baked, port, ADMIN_KEY)
    command = _image_command(env, stage_json_command("runtime", "ENTRYPOINT") + stage_json_command("runtime", "CMD"))
    assert Path(command[0]).parent == baked.venv / "bin", command
    log = baked.root / "image-server.log"
    image_files = _snapshot(baked.venv, baked.cache)
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=baked.root / "data",  # the image's WORKDIR
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ImageProcess(process, log, port, image_files)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"akidb serve from the runtime venv exited with {process.returncode}\n{server.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"akidb serve from the runtime venv was not ready in {READY_TIMEOUT_S} s\n{server.tail()}")
            time.sleep(0.25)
        yield server
    finally:
        stop_process_group(process)


def test_the_image_refuses_to_start_without_an_admin_key(baked: Baked) -> None:
    env = _image_env(baked, free_port(), admin_key=None)
    command = _image_command(env, stage_json_command("runtime", "ENTRYPOINT") + stage_json_command("runtime", "CMD"))
    done = subprocess.run(command, cwd=baked.root / "data", env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "auth is on but no key can be used" in done.stderr


def test_the_runtime_venv_serves_the_baked_graph_like_the_repo(
    baked: Baked, image_server: ImageProcess, akidb_server: AkidbServer
) -> None:
    base = f"http://127.0.0.1:{image_server.port}"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=base, timeout=60.0) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.post("/api/v1/embed", json={"inputs": [TEXT]}).status_code == 401  # auth is on
        models = {model["id"]: model for model in client.get("/api/v1/models", headers=headers).json()["models"]}
        default = models["all-MiniLM-L6-v2"]
        assert (default["loaded_provider"], default["loaded_quantization"]) == ("onnx", "fp32"), default
        response = client.post("/api/v1/embed", json={"inputs": [TEXT]}, headers=headers)
        assert response.status_code == 200, response.text
        vector = np.asarray(response.json()["embeddings"][0], dtype=np.float64)
    assert vector.shape == (384,)

    # The image's HEALTHCHECK, as Docker would run it inside the container.
    env = _image_env(baked, image_server.port, ADMIN_KEY)
    probe = _image_command(env, stage_json_command("runtime", "HEALTHCHECK"))
    assert Path(probe[0]).parent == baked.venv / "bin", probe
    check = subprocess.run(probe, cwd=baked.root / "data", env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr

    reference = akidb_server.client.post("/api/v1/embed", json={"inputs": [TEXT]})
    assert reference.status_code == 200, reference.text
    expected = np.asarray(reference.json()["embeddings"][0], dtype=np.float64)
    cosine = float(vector @ expected / (np.linalg.norm(vector) * np.linalg.norm(expected)))
    assert cosine > 0.999, cosine

    # Nothing was written into the venv or the cache while serving (the image mounts them read-only).
    assert _snapshot(baked.venv, baked.cache) == image_server.image_files
