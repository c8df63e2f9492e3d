"""deploy/k8s: each overlay renders with `kubectl kustomize`, every object passes kubernetes-validate in strict
mode, and the objects have what docs/deploy.md promises (issue 11)."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from akidb.auth.keys import valid_admin_key_setting
from akidb.config import load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = REPO_ROOT / "deploy" / "k8s" / "overlays"
# The oldest Kubernetes these manifests claim to work on (autoscaling/v2 behavior, policy/v1, seccompProfile).
K8S_VERSION = "1.27"
SELECTOR = {"app.kubernetes.io/name": "akidb", "app.kubernetes.io/component": "gateway"}

Doc = dict[str, Any]


@functools.cache
def _render(overlay: str) -> tuple[Doc, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render deploy/k8s with `kubectl kustomize` (install kubectl)")
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def render(overlay: str) -> list[Doc]:
    return copy.deepcopy(list(_render(overlay)))


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[Doc]) -> Doc:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["akidb"]
    return dict(containers[0])


def container_env(docs: list[Doc]) -> dict[str, Any]:
    """The container's environment: its env entries (values or valueFrom) over the ConfigMaps it reads."""
    env: dict[str, Any] = {}
    configmaps = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "ConfigMap")}
    for source in container(docs).get("envFrom", []):
        assert "configMapRef" in source, f"unexpected envFrom source {source}"
        env.update(configmaps[source["configMapRef"]["name"]]["data"])
    for entry in container(docs).get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


def data_volume(docs: list[Doc]) -> Doc:
    """The pod's volume mounted at /data."""
    name = next(m["name"] for m in container(docs)["volumeMounts"] if m["mountPath"] == "/data")
    return dict(next(v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == name))


def secret_ref(env: dict[str, Any], name: str) -> tuple[str, str]:
    source = env.get(name)
    assert isinstance(source, dict), f"{name} must come from a Secret, got {source!r}"
    assert "secretKeyRef" in source, f"{name} must come from a Secret, got {source!r}"
    return source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]


@pytest.mark.parametrize("overlay", ["single", "replicated"])
def test_every_object_validates_strictly(overlay: str) -> None:
    docs = render(overlay)
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}")
    # Strict means strict: an unknown field is refused (so the loop above is not vacuous).
    deployment = copy.deepcopy(one(docs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["single", "replicated"])
def test_container_is_locked_down_and_probed(overlay: str) -> None:
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    assert main["image"].startswith("akidb/gateway:"), main["image"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = main["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False

    # The only writable paths: /data and /tmp.
    mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert set(mounts) == {"/data", "/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]]

    resources = main["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]

    port = main["ports"][0]
    assert (port["name"], port["containerPort"]) == ("http", 8080)
    assert main["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health/live"
    startup = main["startupProbe"]
    assert startup["httpGet"]["path"] == "/health/ready"
    # Model load plus an index rebuild: about ten minutes before the kubelet restarts the container.
    budget = startup["failureThreshold"] * startup["periodSeconds"]
    assert 480 <= budget <= 900, f"startupProbe allows {budget} s"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"]["port"] in ("http", 8080)


@pytest.mark.parametrize("overlay", ["single", "replicated"])
def test_settings_start_a_server_with_auth(overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment the pod gets is one akidb's settings loader accepts (an unknown AKIDB_* name would
    stop start-up), listening on every address with auth on and the admin key from the Secret."""
    docs = render(overlay)
    env = container_env(docs)
    secrets = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Secret")}
    secret_env = {name: secret_ref(env, name) for name, value in env.items() if isinstance(value, dict)}
    assert "AKIDB_AUTH_ADMIN_KEY" in secret_env
    for name, (secret, key) in secret_env.items():
        # The shipped Secret holds placeholders only, and a placeholder admin key is refused at start-up.
        placeholder = secrets[secret]["stringData"][key]
        assert "REPLACE-ME" in placeholder, f"{name}: the shipped Secret must hold a placeholder"
    admin_placeholder = secrets[secret_env["AKIDB_AUTH_ADMIN_KEY"][0]]["stringData"]["admin-key"]
    assert not valid_admin_key_setting(admin_placeholder)

    plain = {name: str(value) for name, value in env.items() if not isinstance(value, dict)}
    stand_ins = {"AKIDB_AUTH_ADMIN_KEY": "k" * 32, "AKIDB_STORAGE_URL": "postgresql+psycopg://u:p@db:5432/akidb"}
    monkeypatch.chdir(tmp_path)  # no akidb.toml of the checkout's
    settings = load_settings(environ={**plain, **{name: stand_ins[name] for name in secret_env}})
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 8080
    assert settings.auth.enabled is True
    assert settings.storage.data_dir == "/data"
    # The image bakes its ONNX graphs into its own cache dir (and has no torch to export others): the manifests
    # must not point the cache elsewhere.
    assert "AKIDB_EMBEDDING_CACHE_DIR" not in plain
    assert settings.embedding.cache_dir == ""
    assert settings.embedding.preload is True


def test_single_is_one_sqlite_process_on_a_volume() -> None:
    docs = render("single")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert not of_kind(docs, "HorizontalPodAutoscaler"), "SQLite allows one process: no autoscaler"
    env = container_env(docs)
    assert "AKIDB_STORAGE_URL" not in env  # SQLite under /data
    claim = one(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    data = data_volume(docs)
    assert data == {"name": data["name"], "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}


def test_replicated_runs_several_processes_on_postgresql() -> None:
    docs = render("replicated")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert secret_ref(container_env(docs), "AKIDB_STORAGE_URL")[1] in one(docs, "Secret")["stringData"]
    assert not of_kind(docs, "PersistentVolumeClaim")
    # The index files are a cache of the database, rebuilt at start-up: no volume to share or to lose.
    assert "emptyDir" in data_volume(docs)

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == SELECTOR

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "akidb"}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    # CPU only: every replica holds every index, so memory never falls by adding replicas.
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert all(m["type"] == "Resource" for m in hpa["spec"]["metrics"])
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


@pytest.mark.parametrize("overlay", ["single", "replicated"])
def test_network_policy_and_service_select_the_gateway(overlay: str) -> None:
    docs = render(overlay)
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert SELECTOR.items() <= pod_labels.items()
    assert one(docs, "Deployment")["spec"]["selector"]["matchLabels"] == SELECTOR
    assert one(docs, "Service")["spec"]["selector"] == SELECTOR
    policy = one(docs, "NetworkPolicy")
    # Never {}: that would put every pod of the namespace under this policy.
    assert policy["spec"]["podSelector"]["matchLabels"] == SELECTOR
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert ingress_ports == {8080}
    egress_ports = {port["port"] for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert 53 in egress_ports
    assert (5432 in egress_ports) == (overlay == "replicated")
