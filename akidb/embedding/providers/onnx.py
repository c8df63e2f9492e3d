"""The ONNX Runtime backend: a graph exported once from the Hugging Face checkpoint, cached, then run by ORT.

The export (torch + transformers, the `dynamo=True` exporter) happens only when no cached graph matches
the model's files, opset and quantization; a cached graph is served with onnxruntime alone. INT8 is ORT's
dynamic quantization of the fp32 graph with per-channel weights, cached beside it. The graph ends at
last_hidden_state: pooling, any Dense head and normalisation run in numpy, shared with the other backends.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import inspect
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from akidb.embedding.heads import load_output_head
from akidb.embedding.pooling import pool
from akidb.embedding.provider import ProviderOptions, ProviderUnsupported, missing_extra
from akidb.embedding.sources import max_seq_length_of
from akidb.embedding.spec import ModelSpec
from akidb.embedding.tokenization import FloatArray, TokenizedModel, load_tokenizer
from akidb.embedding.tokens import PaddedBatch

log = logging.getLogger(__name__)

# The default (and newest fully supported) opset of torch 2.13's dynamo exporter; asking for another one
# makes the exporter run ONNX's version converter afterwards. Part of the cache key.
OPSET = 20
# Bumped whenever the export itself changes (2: eager attention), so no stale graph is reused.
EXPORT_RECIPE = 2
GRAPH_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"
# Above this many bytes of weights the graph keeps its tensors in model.onnx.data (protobuf stops at 2 GiB).
EXTERNAL_DATA_BYTES = 1536 * 1024 * 1024
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json")
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_COREML = "CoreMLExecutionProvider"
# One build at a time in this process; other processes are kept apart by the atomic rename.
_build_lock = threading.Lock()
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise missing_extra("onnx", "onnx", exc) from exc
    return onnxruntime


def model_files_digest(model_path: Path) -> str:
    """sha256 over config.json and every weight file (names, sizes and contents): new weights, new graph."""
    files = [model_path / "config.json"]
    for pattern in _WEIGHT_PATTERNS:
        files.extend(sorted(model_path.glob(pattern)))
    if len(files) == 1:
        raise ProviderUnsupported(f"onnx: no weight files (*.safetensors, pytorch_model*.bin) in {model_path}")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def cache_key(spec: ModelSpec, files_digest: str, quantization: str) -> str:
    safe_id = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.id).strip("._") or "model"
    return f"{safe_id}-{files_digest[:16]}-opset{OPSET}-e{EXPORT_RECIPE}-{quantization}"


def pick_execution_provider(available: Sequence[str], device: str, quantization: str) -> tuple[str, dict[str, Any]]:
    """The ORT execution provider for `device`, and its options. auto: CUDA, then CoreML, then CPU.

    Dynamic INT8 graphs run their integer kernels on the CPU only, so auto picks the CPU for them.
    """
    if device == "auto":
        if quantization == "int8":
            return _CPU, {}
        for provider in (_CUDA, _COREML):
            if provider in available:
                return provider, {}
        return _CPU, {}
    if device == "cpu":
        return _CPU, {}
    if device == "cuda" or device.startswith("cuda:"):
        if _CUDA not in available:
            raise ProviderUnsupported(
                f"onnx: device '{device}' asked for, but onnxruntime has no {_CUDA} here (pip install onnxruntime-gpu)"
            )
        index = device.partition(":")[2]
        if index and not index.isdigit():
            raise ProviderUnsupported(f"onnx: unknown device '{device}' (cuda:N takes a number)")
        chosen: tuple[str, dict[str, Any]] = (_CUDA, {"device_id": int(index or 0)})
    elif device in {"coreml", "mps"}:
        if _COREML not in available:
            raise ProviderUnsupported(
                f"onnx: device '{device}' asked for, but onnxruntime has no {_COREML} here (macOS builds only)"
            )
        chosen = (_COREML, {})
    else:
        raise ProviderUnsupported(f"onnx: unknown device '{device}' (auto, cpu, cuda, cuda:N, coreml or mps)")
    if quantization == "int8":
        raise ProviderUnsupported(f"onnx: dynamic int8 runs on the CPU only; on '{device}' use fp32")
    return chosen


def _versions(*packages: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def _complete(folder: Path) -> bool:
    # metadata.json is written last, inside the temporary folder, so its presence means a finished build.
    return (folder / GRAPH_FILE).is_file() and (folder / METADATA_FILE).is_file()


def _cached_build(folder: Path, build: Callable[[Path], dict[str, Any]], metadata: dict[str, Any]) -> Path:
    """`folder`, built by `build(temporary folder)` unless already there. Readers never see half a build:
    the graph is written into a hidden sibling folder that is renamed into place when complete."""
    if _complete(folder):
        return folder
    with _build_lock:
        if _complete(folder):
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        try:
            extra = build(temporary)
            created_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            record = {**metadata, **extra, "created_at": created_at}
            (temporary / METADATA_FILE).write_text(json.dumps(record, indent=2) + "\n")
            temporary.chmod(0o755)  # mkdtemp's 0o700 would keep the cache from other users
            if folder.exists() and not _complete(folder):
                shutil.rmtree(folder)  # a broken leftover, not another process's finished build
            try:
                os.replace(temporary, folder)
            except OSError:
                if not _complete(folder):  # anything but losing a race to an identical build is an error
                    raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
    return folder


def _not_from_onnxruntime(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or f"{os.sep}onnxruntime{os.sep}" not in record.pathname


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's and quantizer's prints, warnings and INFO logs (hundreds of lines of graph
    rewrites; ORT's quantizer logs through the root logger, hence the filter there)."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    root = logging.getLogger()
    root.addFilter(_not_from_onnxruntime)
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(_not_from_onnxruntime)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _import_exporter(cache_root: Path) -> tuple[Any, Any]:
    """torch and transformers, needed only to export: a cached graph runs without them."""
    try:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    except ImportError as exc:
        raise ProviderUnsupported(
            f"the onnx provider needs pip install 'akidb[onnx]': torch and transformers export the model once, "
            f"and no exported graph is cached under {cache_root} ({exc})"
        ) from exc
    return torch, AutoModel


def _export_graph(model_path: Path, destination: Path) -> dict[str, Any]:
    """Export the checkpoint's encoder to destination/model.onnx: inputs input_ids, attention_mask (and
    token_type_ids where forward takes them), output last_hidden_state, batch and sequence axes dynamic.

    The example batch must hold padding: transformers skips building the attention mask when it is all
    ones, and the exporter would record that shortcut as the graph.
    """
    torch, auto_model = _import_exporter(destination.parent)
    # fp32 whatever the checkpoint's dtype ("auto" would keep bf16 weights, which ORT's CPU kernels lack).
    # Eager attention: the SDPA export adds a NaN guard (IsNaN + Where over every attention matrix) that
    # took 13% of MiniLM's kernel time; the eager graph gives the same vectors ~15% faster.
    model = auto_model.from_pretrained(str(model_path), dtype=torch.float32, attn_implementation="eager").eval()
    parameters = inspect.signature(model.forward).parameters
    names = [name for name in MODEL_INPUTS if name in parameters]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise ProviderUnsupported(f"onnx: {type(model).__name__}.forward takes no input_ids/attention_mask")
    extra_kwargs = {"use_cache": False} if "use_cache" in parameters else {}

    module: Any = torch.nn.Module

    class LastHiddenState(module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(**{name: inputs[name] for name in names}, **extra_kwargs).last_hidden_state

    vocab = int(getattr(model.config, "vocab_size", 1000))
    example_ids = (torch.arange(2 * 9, dtype=torch.int64).reshape(2, 9) % (vocab - 2)) + 1
    example_mask = torch.ones(2, 9, dtype=torch.int64)
    example_mask[1, 6:] = 0
    example = {
        "input_ids": example_ids,
        "attention_mask": example_mask,
        "token_type_ids": torch.zeros_like(example_ids),
    }
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external_data = weight_bytes > EXTERNAL_DATA_BYTES
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                LastHiddenState(),
                tuple(example[name] for name in names),
                input_names=names,
                output_names=[OUTPUT],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
            program.save(str(destination / GRAPH_FILE), external_data=external_data)
    except Exception as exc:  # an architecture the exporter cannot trace: let the router try the next backend
        raise ProviderUnsupported(
            f"onnx: torch.onnx could not export {model_path} ({type(exc).__name__}: {exc})"
        ) from exc
    _verify_export(destination / GRAPH_FILE, model, names, extra_kwargs, torch)
    versions = _versions("torch", "transformers", "onnx", "onnxscript", "onnxruntime")
    return {"inputs": names, "external_data": external_data, "exporter": "torch.onnx.export(dynamo=True)", **versions}


def _verify_export(graph: Path, model: Any, names: list[str], extra_kwargs: dict[str, Any], torch: Any) -> None:
    """Run the new graph on a batch of another shape than the example; a graph that baked in a shape or
    a branch of the model's Python code disagrees with the model there."""
    onnxruntime = _import_onnxruntime()
    ids = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]], dtype=torch.int64).repeat(1, 5)
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    mask[2, 11:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    with torch.inference_mode():
        expected = model(**{name: inputs[name] for name in names}, **extra_kwargs).last_hidden_state.numpy()
    session = onnxruntime.InferenceSession(str(graph), providers=[_CPU])
    got = session.run([OUTPUT], {name: inputs[name].numpy() for name in names})[0]
    real = mask.numpy().astype(bool)
    error = float(np.abs(got - expected)[real].max())
    scale = max(1.0, float(np.abs(expected[real]).max()))
    if not error <= 1e-3 * scale:
        raise ProviderUnsupported(f"onnx: the exported graph disagrees with the model (max error {error:.3g})")


def _quantize_int8(source: Path, destination: Path, external_data: bool) -> dict[str, Any]:
    """Dynamic INT8: weights quantized per output channel (per-tensor scales cost MiniLM ~0.04 of cosine),
    activations quantized per input tensor at run time. ORT's pre-processing (shape inference, graph cleanup)
    first; its symbolic shape inference cannot follow the dynamo graph's shapes and is skipped."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise missing_extra("onnx", "onnx", exc) from exc
    prepared = destination / "prepared.onnx"
    with _quiet_exporter():
        quant_pre_process(
            str(source / GRAPH_FILE), str(prepared), skip_symbolic_shape=True, save_as_external_data=external_data
        )
        quantize_dynamic(
            prepared,
            destination / GRAPH_FILE,
            per_channel=True,
            weight_type=QuantType.QInt8,
            use_external_data_format=external_data,
        )
    for leftover in destination.glob("prepared.onnx*"):
        leftover.unlink()
    return {
        "quantized_from": source.name,
        "quantization_method": "onnxruntime quantize_dynamic, per-channel QInt8 weights",
        **_versions("onnx", "onnxruntime"),
    }


class OnnxProvider(TokenizedModel):
    def __init__(self, spec: ModelSpec, model_path: Path, options: ProviderOptions) -> None:
        onnxruntime = _import_onnxruntime()
        self._spec = spec
        self.batch_size = options.batch_size
        self.quantization = options.quantization
        if options.quantization == "int4":
            raise ProviderUnsupported("onnx: int4 is not offered; use int8, or the mlx provider for 4-bit")
        if options.quantization == "fp16":
            raise ProviderUnsupported("onnx: fp16 is not offered; use fp32 or int8, or the torch provider for fp16")
        if options.quantization not in {"fp32", "int8"}:
            raise ProviderUnsupported(f"onnx: unknown quantization '{options.quantization}' (fp32 or int8)")
        provider, provider_options = pick_execution_provider(
            onnxruntime.get_available_providers(), options.device, options.quantization
        )
        self.max_length = max_seq_length_of(model_path, spec)
        self._tokenizer, self._pad_id = load_tokenizer(model_path, self.max_length)
        # Dense layers after pooling (EmbeddingGemma) and normalisation, in numpy: not part of the graph.
        self._head = load_output_head(model_path, spec)
        self.graph_path = self._graph(model_path, options)

        session_options = onnxruntime.SessionOptions()
        session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.num_threads = options.num_threads if options.num_threads > 0 else (os.cpu_count() or 1)
        session_options.intra_op_num_threads = self.num_threads
        providers: list[Any] = [(provider, provider_options)] + ([] if provider == _CPU else [_CPU])
        try:
            self._session: Any = onnxruntime.InferenceSession(
                str(self.graph_path), sess_options=session_options, providers=providers
            )
        except Exception as exc:  # ORT raises its own Fail/RuntimeException types
            if provider == _CPU:
                raise
            raise ProviderUnsupported(
                f"onnx: {provider} for device '{options.device}' failed to start ({exc})"
            ) from exc
        # ORT quietly drops an execution provider whose libraries fail to load; say what really runs.
        self.execution_provider: str = self._session.get_providers()[0]
        if self.execution_provider != provider:
            if options.device != "auto":
                raise ProviderUnsupported(
                    f"onnx: {provider} for device '{options.device}' failed to start; onnxruntime fell back to "
                    f"{self.execution_provider}"
                )
            log.warning("onnx provider: %s failed to start, running on %s", provider, self.execution_provider)
        self._inputs = [node.name for node in self._session.get_inputs()]
        unknown = set(self._inputs) - set(MODEL_INPUTS)
        if unknown:
            raise ProviderUnsupported(f"onnx: {self.graph_path} takes inputs this provider cannot feed: {unknown}")
        # One inference at a time: ORT already spreads one batch over intra_op_num_threads cores.
        self._lock = threading.Lock()
        log.info(
            "onnx provider: %s on %s from %s, %s, %d threads (max %d tokens)",
            spec.id,
            self.execution_provider,
            self.graph_path,
            options.quantization,
            self.num_threads,
            self.max_length,
        )

    def _graph(self, model_path: Path, options: ProviderOptions) -> Path:
        """The cached graph for this model and quantization, exported (and quantized) first if missing."""
        digest = model_files_digest(model_path)
        root = options.cache_dir / "onnx"
        metadata = {"model_id": self._spec.id, "source_path": str(model_path.resolve()), "files_sha256": digest}
        fp32 = root / cache_key(self._spec, digest, "fp32")
        int8 = root / cache_key(self._spec, digest, "int8")
        if options.quantization == "fp32" or not _complete(int8):
            export = lambda tmp: _export_graph(model_path, tmp)  # noqa: E731
            _cached_build(fp32, export, {**metadata, "opset": OPSET, "quantization": "fp32"})
        if options.quantization == "fp32":
            return fp32 / GRAPH_FILE
        if not _complete(int8):
            exported = json.loads((fp32 / METADATA_FILE).read_text())
            exported.pop("created_at", None)
            quantize = lambda tmp: _quantize_int8(fp32, tmp, bool(exported.get("external_data")))  # noqa: E731
            _cached_build(int8, quantize, {**exported, **metadata, "opset": OPSET, "quantization": "int8"})
        return int8 / GRAPH_FILE

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def name(self) -> str:
        return "onnx"

    @property
    def rows_per_pass(self) -> int | None:
        # Dynamic INT8 scales activations per tensor, i.e. over the whole batch, padding included, so a
        # text's vector would shift (cosine ~0.99) with its batch neighbours. Alone, each text always gets
        # the same vector; measured on a quiet CPU this costs 6-9% of int8 throughput on MiniLM.
        return 1 if self.quantization == "int8" else None

    def _run_batch(self, batch: PaddedBatch) -> FloatArray:
        if self.rows_per_pass == 1 and len(batch.lengths) > 1:
            # A caller that did not cut by rows_per_pass: each row alone all the same.
            rows = [
                PaddedBatch(
                    batch.input_ids[i : i + 1, :n],
                    batch.attention_mask[i : i + 1, :n],
                    batch.token_type_ids[i : i + 1, :n],
                )
                for i, n in enumerate(batch.lengths.tolist())
            ]
            return np.concatenate([self._run(row) for row in rows])
        return self._run(batch)

    def _run(self, batch: PaddedBatch) -> FloatArray:
        feeds = {name: getattr(batch, name) for name in self._inputs}
        with self._lock:
            if self._session is None:
                raise RuntimeError("onnx provider is closed")
            hidden = self._session.run([OUTPUT], feeds)[0]
        return pool(hidden, batch.attention_mask, self._spec.pooling)

    def weight_bytes(self) -> int:
        """Bytes of the graph in use (its weights, INT8-packed where quantized, plus external data)."""
        return sum(path.stat().st_size for path in self.graph_path.parent.glob(f"{GRAPH_FILE}*"))

    def close(self) -> None:
        with self._lock:
            self._session = None
