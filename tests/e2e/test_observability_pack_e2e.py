"""deploy/observability against a real server: every metric name that the Grafana dashboard's queries and
the Prometheus alert rules' expressions use is in a real /metrics scrape (after a collection, an upsert, a
search and an embedding, so that the lazily created series exist), and promtool accepts the rules and passes
their unit tests (skipped, saying so, where promtool is not installed: `apt-get install prometheus`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from akidb.config import EmbeddingSettings
from akidb.embedding.registry import default_registry
from akidb.embedding.router import EmbeddingRouter
from tests.e2e.conftest import REPO_ROOT, AkidbServer

pytestmark = pytest.mark.e2e

PACK = REPO_ROOT / "deploy" / "observability"
ALERTS = PACK / "alerts.yml"
ALERTS_TEST = PACK / "alerts_test.yml"
DASHBOARD = PACK / "dashboard.json"
CONFIG = '[embedding]\nprovider = "mock"\n'
# Metric names of this server: the akidb_* metrics (Litestar's middleware uses the same prefix) and the
# process_* ones of prometheus_client. `up` and other Prometheus-made series are not scraped, so not checked.
METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:akidb|process|python)_[A-Za-z0-9_:]+)")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
# What the product promises to alert on and to chart.
PROMISED_ALERT_METRICS = {
    "akidb_requests_total",
    "akidb_request_duration_seconds_bucket",
    "akidb_embed_rejected_total",
    "akidb_model_load_failures_total",
    "akidb_replica_lag_seconds",
    "akidb_index_checkpoint_failures_total",
}
PROMISED_DASHBOARD_METRICS = {
    "akidb_requests_total",
    "akidb_request_duration_seconds_bucket",
    "akidb_embed_queue_size",
    "akidb_embed_batch_size_bucket",
    "akidb_embed_batch_tokens_sum",
    "akidb_embed_cache_hits_total",
    "akidb_embed_cache_misses_total",
    "akidb_model_memory_bytes",
    "akidb_replica_lag_seconds",
    "akidb_replica_applied_seq",
    "akidb_search_plan_total",
}


def metric_names(expression: str) -> set[str]:
    """The metric names an expression uses (string literals, such as label values, left out)."""
    return set(METRIC_NAME.findall(QUOTED.sub('""', expression)))


def alert_expressions() -> dict[str, str]:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return {rule["alert"]: rule["expr"] for group in document["groups"] for rule in group["rules"]}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboard, named by panel title and refId or variable name."""
    board = dashboard()
    found = {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in panels(board)
        for target in panel.get("targets", [])
    }
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            found[f"${variable['name']}"] = query["query"] if isinstance(query, dict) else query
    return found


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The sample names of a real scrape of a server that has done some of everything."""
    server = AkidbServer(tmp_path_factory.mktemp("akidb-observability"), config=CONFIG)
    try:
        server.start()
        client = server.client
        response = client.post("/api/v1/collections", json={"name": "obs"})
        assert response.status_code == 201, response.text
        documents = [{"id": f"d{i}", "text": f"observed document {i}", "metadata": {"n": i}} for i in range(5)]
        response = client.post("/api/v1/collections/obs/upsert", json={"documents": documents})
        assert response.status_code == 200, response.text
        response = client.post("/api/v1/collections/obs/search", json={"query": "observed", "top_k": 3})
        assert response.status_code == 200, response.text
        for _ in range(2):  # a miss, then a hit in the embedding cache
            response = client.post("/api/v1/embed", json={"inputs": ["what the dashboard charts"]})
            assert response.status_code == 200, response.text
        # akidb_replica_applied_seq is published each follow round (every 200 ms), so it may trail a little.
        deadline = time.monotonic() + 30.0
        while True:
            response = client.get("/metrics")
            assert response.status_code == 200, response.text
            names = {
                sample.name for family in text_string_to_metric_families(response.text) for sample in family.samples
            }
            if "akidb_replica_applied_seq" in names or time.monotonic() > deadline:
                return names
            time.sleep(0.2)
    finally:
        server.close()


def missing(used: dict[str, str], names: set[str]) -> dict[str, list[str]]:
    """Per expression, the metric names that the scrape lacks (a histogram's base name counts as present)."""
    absent: dict[str, list[str]] = {}
    for where, expression in used.items():
        lacking = sorted(
            name for name in metric_names(expression) if name not in names and f"{name}_bucket" not in names
        )
        if lacking:
            absent[where] = lacking
    return absent


def test_extraction_reads_names_not_label_values() -> None:
    expression = "sum(rate(akidb_requests_total{path=~\"akidb_not_a_metric\", job='akidb'}[5m])) > up"
    assert metric_names(expression) == {"akidb_requests_total"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(akidb_embed_batch_size_bucket[5m])))") == {
        "akidb_embed_batch_size_bucket"
    }


def test_every_alert_metric_is_in_a_real_scrape(scraped: set[str]) -> None:
    expressions = alert_expressions()
    used = set().union(*(metric_names(expression) for expression in expressions.values()))
    assert used >= PROMISED_ALERT_METRICS, f"alerts.yml does not cover {sorted(PROMISED_ALERT_METRICS - used)}"
    assert missing(expressions, scraped) == {}, f"scraped names: {sorted(scraped)}"


def test_every_dashboard_metric_is_in_a_real_scrape(scraped: set[str]) -> None:
    expressions = dashboard_expressions()
    used = set().union(*(metric_names(expression) for expression in expressions.values()))
    assert used >= PROMISED_DASHBOARD_METRICS, f"dashboard.json lacks {sorted(PROMISED_DASHBOARD_METRICS - used)}"
    assert missing(expressions, scraped) == {}, f"scraped names: {sorted(scraped)}"


def test_dashboard_uses_the_datasource_variable() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed: cannot check deploy/observability (apt-get install prometheus)")
    return found


def run_promtool(*args: str, cwd: Path = REPO_ROOT) -> None:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


def test_promtool_check_rules() -> None:
    run_promtool("check", "rules", str(ALERTS))


def test_promtool_test_rules() -> None:
    run_promtool("test", "rules", ALERTS_TEST.name, cwd=PACK)


def _sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_model_metrics_follow_loads_failures_and_unloads(tmp_path: Path) -> None:
    """akidb_model_memory_bytes is set by a load and goes with the unload; a load that raises counts in
    akidb_model_load_failures_total (in this process, with the router itself: no server needed)."""

    def router(**settings: object) -> EmbeddingRouter:
        embedding = msgspec.convert({"cache_dir": str(tmp_path), **settings}, EmbeddingSettings)
        return EmbeddingRouter(embedding, default_registry())

    model = "all-MiniLM-L6-v2"
    manager = router(provider="mock")
    try:
        manager.models.load(model)
        assert _sample("akidb_model_memory_bytes", model=model) is not None
        assert _sample("akidb_embed_rejected_total", model=model, reason="queue_full") is not None
        assert manager.models.unload(model) is True
        assert _sample("akidb_model_memory_bytes", model=model) is None
    finally:
        manager.close()

    failing = router(provider="torch", quantization="int4", fallback=False)
    before = _sample("akidb_model_load_failures_total", model=model) or 0.0
    with pytest.raises(Exception, match="int4"):
        failing.models.load(model)
    assert _sample("akidb_model_load_failures_total", model=model) == before + 1
    failing.close()
