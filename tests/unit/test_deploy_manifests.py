"""Deployment artefacts, checked offline: deploy/k8s against Kubernetes' own schemas (strict),
deploy/compose.yaml against the Compose specification, and both name only real settings.

The Kubernetes schemas ship inside ``kubernetes-validate``; the Compose specification schema is the
copy vendored by ``check-jsonschema``. Nothing here talks to a cluster, a registry or Docker (a
fixture refuses network connections), so a renamed setting, a typo in a field name or a probe on
the wrong path fails in ``make unit``.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import socket
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from vsync_stream.auth import Authorizer
from vsync_stream.settings import Settings
from vsync_stream.settings_doc import env_var

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)
# The oldest Kubernetes the manifests are written for; its schemas ship inside kubernetes-validate.
KUBERNETES_VERSION = "1.31.0"
SETTING_NAME = re.compile(r"\bVSYNC_[A-Z0-9_]+\b")
K8S_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
COMPOSE_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")
PLACEHOLDER = "REPLACE-ME"
MIN_STARTUP_BUDGET_S = 600  # changelog restore of a large table before the web view answers


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text("utf-8")) if doc is not None]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in load_all(path)}


def only(kind: str) -> dict[str, Any]:
    found = [doc for (k, _), doc in k8s_objects().items() if k == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def headless_service() -> dict[str, Any]:
    found = [doc for (k, _), doc in k8s_objects().items() if k == "Service" and doc["spec"].get("clusterIP") == "None"]
    assert len(found) == 1, "expected one headless Service (clusterIP: None)"
    return found[0]


def worker_container() -> dict[str, Any]:
    (container,) = only("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return container


def container_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def setting_names() -> set[str]:
    return {env_var(Settings, name) for name in Settings.model_fields}


def expand_k8s(value: str, env: dict[str, str]) -> str:
    return K8S_VAR_REF.sub(lambda m: env[m.group(1)], value)


def k8s_environment(pod_name: str = "vsync-stream-0", namespace: str = "vsync") -> dict[str, str]:
    """The environment Kubernetes gives the worker container, secrets taken from the example Secret."""
    (secret,) = load_all(SECRET_EXAMPLE)
    env = dict(only("ConfigMap")["data"])
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace}
    for entry in worker_container()["env"]:
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = expand_k8s(entry["value"], env)
        elif "fieldRef" in source:
            env[entry["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            env[entry["name"]] = secret["stringData"][source["secretKeyRef"]["key"]]
    return env


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text("utf-8"))


def compose_workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items() if svc.get("command") == ["worker"]}


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: COMPOSE_DEFAULT.sub(lambda m: m.group(2), str(v)) for k, v in service["environment"].items()}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a worker started with exactly ``env`` would read (nothing from this shell)."""
    for name in list(os.environ):
        if name.startswith("VSYNC_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the deployment checks must run offline")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --- Kubernetes ---------------------------------------------------------------------------------

def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text("utf-8"))
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {p.name for p in MANIFESTS} - {SECRET_EXAMPLE.name}, (
        "kustomization.yaml must list every manifest of deploy/k8s except secret.example.yaml")
    image = worker_container()["image"]
    assert [i["name"] for i in kustomization["images"]] == [image.rsplit(":", 1)[0]]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_for_kubernetes_strictly(path: Path, offline: None) -> None:
    docs = load_all(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


def test_strict_validation_rejects_an_unknown_field(offline: None) -> None:
    statefulset = json.loads(json.dumps(only("StatefulSet")))
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("path", [K8S / "configmap.yaml", K8S / "statefulset.yaml", SECRET_EXAMPLE, COMPOSE,
                                  DOCKERFILE], ids=lambda p: p.name)
def test_every_vsync_variable_named_is_a_setting(path: Path) -> None:
    named = set(SETTING_NAME.findall(path.read_text("utf-8")))
    assert named, f"{path.name} names no VSYNC_ setting"
    unknown = sorted(named - setting_names())
    assert not unknown, (f"{path.relative_to(REPO)} names {unknown}, which vsync_stream.settings.Settings does not "
                         "read (`vsync-stream settings` lists the real ones)")


def test_worker_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = k8s_environment()
    settings = settings_from(env, monkeypatch)
    (secret,) = load_all(SECRET_EXAMPLE)
    tokens_file = tmp_path / "api-tokens"
    tokens_file.write_text(secret["stringData"]["api-tokens"], "utf-8")
    authorizer = Authorizer.from_settings(settings.model_copy(update={"api_tokens_file": tokens_file}))
    assert len(authorizer.grants) == 2  # the API token and the cluster token, both well formed
    container = worker_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert settings.web_host == "0.0.0.0"
    assert settings.web_port == container_port(container, "http")
    assert str(settings.data_dir) == mounts["data"]
    assert settings.api_tokens_file is not None
    assert settings.api_tokens_file.parent == PurePosixPath(mounts["api-tokens"])


def test_env_references_point_at_variables_defined_before_them() -> None:
    # Kubernetes leaves an unresolvable $(VAR) in the value as it is, silently.
    defined = set(only("ConfigMap")["data"])
    for entry in worker_container()["env"]:
        for ref in K8S_VAR_REF.findall(entry.get("value", "")):
            assert ref in defined, f"{entry['name']} refers to $({ref}), not defined before it"
        defined.add(entry["name"])


def test_statefulset_runs_workers_with_a_stable_identity() -> None:
    statefulset = only("StatefulSet")
    spec = statefulset["spec"]
    headless = headless_service()
    assert spec["serviceName"] == headless["metadata"]["name"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel"
    container = worker_container()
    assert [*container["command"], *container["args"]] == ["vsync-stream", "worker"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["scripts"]
    assert "vsync-stream" in scripts
    instance_id = next(e for e in container["env"] if e["name"] == "VSYNC_GROUP_INSTANCE_ID")
    assert instance_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    env = k8s_environment(pod_name="vsync-stream-2", namespace="pix")
    url = urlsplit(env["VSYNC_WEB_ADVERTISED_URL"])
    assert url.scheme == "http"
    assert url.hostname == f"vsync-stream-2.{headless['metadata']['name']}.pix.svc.cluster.local"
    assert url.port == int(env["VSYNC_WEB_PORT"]) == container_port(container, "http")
    (claim,) = spec["volumeClaimTemplates"]
    data_mount = next(m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert data_mount["mountPath"] == env["VSYNC_DATA_DIR"]
    assert container["envFrom"] == [{"configMapRef": {"name": only("ConfigMap")["metadata"]["name"]}}]


def test_secrets_come_from_the_secret_the_example_describes() -> None:
    (secret,) = load_all(SECRET_EXAMPLE)
    keys = set(secret["stringData"])
    name = secret["metadata"]["name"]
    container = worker_container()
    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
                   if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(from_secret) == {"VSYNC_POSTGRES_DSN", "VSYNC_CLUSTER_TOKEN"}
    for ref in from_secret.values():
        assert ref["name"] == name and ref["key"] in keys
    volumes = only("StatefulSet")["spec"]["template"]["spec"]["volumes"]
    (tokens,) = [v["secret"] for v in volumes if "secret" in v]
    assert tokens["secretName"] == name and {i["key"] for i in tokens["items"]} <= keys
    assert "data" not in secret, "the example keeps readable placeholders in stringData"
    for key, value in secret["stringData"].items():
        assert PLACEHOLDER in value, f"secret.example.yaml: {key} must hold an obvious placeholder"


def test_probes_hit_healthz_and_readyz_on_the_web_port() -> None:
    container = worker_container()
    web_port = int(only("ConfigMap")["data"]["VSYNC_WEB_PORT"])
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert container_port(container, http["port"]) == web_port, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= MIN_STARTUP_BUDGET_S


def test_services_and_budget_select_the_worker_pods() -> None:
    pod_labels = only("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    container = worker_container()
    services = [doc for (kind, _), doc in k8s_objects().items() if kind == "Service"]
    assert sorted(s["spec"].get("clusterIP", "") for s in services) == ["", "None"]
    for service in services:
        assert service["spec"]["selector"].items() <= pod_labels.items()
        (port,) = service["spec"]["ports"]
        assert container_port(container, port["targetPort"]) == port["port"] == 16066
    budget = only("PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()


def test_worker_pod_is_locked_down_and_writes_only_to_its_volumes() -> None:
    pod = only("StatefulSet")["spec"]["template"]
    spec = pod["spec"]
    container = worker_container()
    assert spec["securityContext"]["runAsNonRoot"] is True
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert spec["enableServiceLinks"] is False  # service links would inject VSYNC_-prefixed variables
    assert spec["automountServiceAccountToken"] is False
    assert 30 <= spec["terminationGracePeriodSeconds"] <= 120
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    assert any(m["mountPath"] == "/tmp" and m["name"] in empty_dirs for m in container["volumeMounts"])
    env = k8s_environment()
    for name in ("VSYNC_DATA_DIR", "VSYNC_RECONCILE_WORKDIR"):
        path = PurePosixPath(env[name])
        assert any(path.is_relative_to(w) for w in writable), f"{name}={path} is on the read-only root filesystem"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container_port(container, "http")


# --- Docker -------------------------------------------------------------------------------------

def compose_spec_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text("utf-8"))


def test_compose_file_follows_the_compose_specification(offline: None) -> None:
    validator = jsonschema.Draft7Validator(compose_spec_schema())
    errors = [f"{'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "deploy/compose.yaml:\n" + "\n".join(errors)
    broken = compose()
    broken["services"]["kafka"]["imagee"] = "typo"
    assert not validator.is_valid(broken), "the Compose schema no longer rejects unknown fields"


def test_compose_runs_two_workers_against_its_own_services(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert set(services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert services["pulsar"]["image"].startswith("apachepulsar/pulsar:")
    assert "standalone" in services["pulsar"]["command"]
    assert services["postgres"]["image"] == "postgres:15"
    workers = compose_workers()
    assert len(workers) == 2
    instance_ids, data_volumes = set(), set()
    for name, worker in workers.items():
        env = compose_environment(worker)
        settings = settings_from(env, monkeypatch)
        Authorizer.from_settings(settings)  # the default tokens are well formed
        assert settings.group_instance_id not in instance_ids
        instance_ids.add(settings.group_instance_id)
        url = urlsplit(settings.web_advertised_url)
        assert url.hostname == name and url.port == settings.web_port, name
        assert any(p.endswith(f":{settings.web_port}") for p in worker["ports"])
        assert settings.web_host == "0.0.0.0"
        (volume,) = [v for v in worker["volumes"] if v.endswith(f":{settings.data_dir}")]
        data_volumes.add(volume.split(":")[0])
        assert settings.kafka_bootstrap.split(":")[0] == "kafka"
        assert urlsplit(settings.pulsar_url).hostname == "pulsar"
        assert urlsplit(settings.postgres_dsn.get_secret_value()).hostname == "postgres"
        assert settings.bridge_target.split(":")[0] in services
        assert {dep: c["condition"] for dep, c in worker["depends_on"].items()} == {
            "kafka": "service_healthy", "pulsar": "service_healthy", "postgres": "service_healthy"}
        assert "/readyz" in " ".join(worker["healthcheck"]["test"])
        build = worker["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert len(data_volumes) == 2, "each worker needs its own RocksDB volume"


def test_dockerfile_installs_the_package_and_runs_a_worker_as_the_pods_user() -> None:
    text = DOCKERFILE.read_text("utf-8")
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim"] * 2
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M))
    sources = {part for line in copied for part in line.split()}
    package_dirs = pyproject["tool"]["setuptools"]["package-dir"].values()
    needed = {"pyproject.toml", pyproject["project"]["readme"], *package_dirs}
    assert needed <= sources, f"deploy/Dockerfile does not copy {sorted(needed - sources)}"
    assert re.search(r"pip install [^\n]*\.$", text, re.M)
    (user,) = re.findall(r"^USER (\d+)", text, re.M)
    assert int(user) == only("StatefulSet")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert 'ENTRYPOINT ["vsync-stream"]' in text and 'CMD ["worker"]' in text
    assert f"EXPOSE {container_port(worker_container(), 'http')}" in text
