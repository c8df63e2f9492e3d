# One venv, bootstrapped from nothing. torch is pinned and installed first so that
# no later requirement can pull a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
# HOST and PORT are passed to `akidb serve` only when given (make serve PORT=9000), so that AKIDB_SERVER_*
# settings from the environment or akidb.toml are not overridden by flags.
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test lint typecheck unit bench clean openapi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[torch,onnx,mlx,dev]" "$(TORCH_PIN)"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/akidb serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

lint: $(STAMP)
	$(BIN)/ruff check akidb tests bench deploy
	$(BIN)/ruff format --check akidb tests bench deploy
	$(BIN)/lint-imports --no-cache
	$(BIN)/hadolint deploy/docker/Dockerfile
	@if command -v promtool >/dev/null 2>&1; then promtool check rules deploy/observability/alerts.yml && promtool test rules deploy/observability/alerts_test.yml; else echo "skipping promtool check/test rules deploy/observability: promtool is not installed (apt-get install prometheus)"; fi

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -p no:cacheprovider -n 2 --durations=25

# The committed OpenAPI document (tests/unit/test_openapi_snapshot.py compares it with the one the app serves).
openapi: $(STAMP)
	$(BIN)/python -m akidb.gateway.openapi tests/openapi.json

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.serving --backend onnx --quantization fp32
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.serving --backend onnx --quantization int8
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.quality
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.memory
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.filters
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.auth
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.replicas
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.churn
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.slot_reuse
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.million

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
