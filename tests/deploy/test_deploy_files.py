"""deploy/: every file parses, references what exists in the repo, and agrees with the service config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.cameras_file import load_cameras_file
from monitor.config import ServiceConfig, load_service_config
from monitor.metrics import IngestMetrics, ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SERVICE_CONFIG = DEPLOY / "config" / "anomon.yaml"
CAMERAS_FILE = DEPLOY / "config" / "cameras.yaml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULES = DEPLOY / "prometheus" / "rules" / "anomon.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
REQUIRED_ALERTS = {
    "AnomonServiceDown",
    "AnomonCameraStalled",
    "AnomonLatencyHigh",
    "AnomonConsumerLagGrowing",
    "AnomonDroppingFrames",
    "AnomonScoringWithoutMotion",
    "AnomonAlertStorm",
    "AnomonWebhookFailing",
    "AnomonModelRefused",
    "AnomonCameraWithoutModel",
    "AnomonCameraSourceDown",
}
# DESIGN.md's metrics, plus the ones an operator needs for saturation, stalls and alert volume.
REQUIRED_ON_DASHBOARD = {
    "anomon_frames_processed_total",
    "anomon_frames_dropped_total",
    "anomon_frames_without_motion_total",
    "anomon_dead_letters_total",
    "anomon_inference_seconds_bucket",
    "anomon_end_to_end_seconds_bucket",
    "anomon_batch_size_bucket",
    "anomon_anomaly_score",
    "anomon_alerts_total",
    "anomon_alerts_active",
    "anomon_consumer_lag_records",
    "anomon_model_info",
    "anomon_models_loaded",
    "anomon_model_swaps_total",
    "anomon_model_load_failures_total",
    "anomon_camera_state",
    "anomon_busy_seconds_total",
    "anomon_last_frame_timestamp_seconds",
    "anomon_ingest_frames_total",
    "anomon_ingest_source_restarts_total",
    "anomon_ingest_source_up",
}
METRIC_NAME = re.compile(r"\banomon_[a-z_]+\b")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _k8s_docs() -> dict[tuple[str, str], dict[str, Any]]:
    """Every manifest, by (kind, name)."""
    docs = [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and "metadata" in doc
    ]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def _service_config() -> ServiceConfig:
    return load_service_config(SERVICE_CONFIG, environ={})


def _exported_names() -> set[str]:
    """Every series name ServiceMetrics can export (counters with _total, histograms' parts)."""
    names = set()
    families = [*ServiceMetrics().registry.collect(), *IngestMetrics().registry.collect()]
    for family in families:
        names |= {family.name, f"{family.name}_total"}
        names |= {f"{family.name}_{part}" for part in ("bucket", "sum", "count")}
    return names


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_every_deploy_file_parses() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml", ".json"}]
    assert len(files) >= 12
    for path in files:
        if path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict), path
        else:
            assert all(doc is not None for doc in yaml.safe_load_all(path.read_text())), path


def test_service_config_loads_and_listens_for_scrapes() -> None:
    cfg = _service_config()
    assert cfg.http.enabled and cfg.http.host == "0.0.0.0"
    assert cfg.model.artifact is None and cfg.model.store == Path("/store")
    assert cfg.model.engine_cache is not None
    cameras = load_cameras_file(CAMERAS_FILE)  # ships without cameras: each site adds its own
    assert cameras.sources == {} and cameras.settings.defaults == cfg.cameras.defaults


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only) of a compose service's volumes."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def _deploy_file(mounts: dict[str, tuple[str, bool]], container_path: str) -> Path:
    """The file under deploy/ that a bind mount puts at `container_path`."""
    for target, (source, _) in mounts.items():
        if source.startswith(".") and (container_path + "/").startswith(target.rstrip("/") + "/"):
            return DEPLOY / source / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not in a bind mount of deploy/")


def test_compose_references_existing_files_and_consistent_ports() -> None:
    compose = _yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"kafka", "ingest", "anomon", "anomon-cpu", "prometheus", "alertmanager", "grafana"} <= set(
        services
    )
    cfg = _service_config()

    # One service definition, two profiles: on a GPU (TensorRT image, GPU reserved) or on any CPU.
    gpu_service, cpu_service = services["anomon"], services["anomon-cpu"]
    assert gpu_service["profiles"] == ["gpu"] and cpu_service["profiles"] == ["cpu"]
    gpu = gpu_service["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "deploy" not in cpu_service and cpu_service["build"]["dockerfile"].endswith("Dockerfile.cpu")
    assert cpu_service["networks"]["default"]["aliases"] == ["anomon"]  # the one scrape target
    for key in ("command", "environment", "volumes", "ports"):
        assert gpu_service[key] == cpu_service[key], key
    for anomon in (gpu_service, cpu_service):
        assert (DEPLOY / anomon["build"]["context"] / anomon["build"]["dockerfile"]).is_file()
        assert f"{cfg.http.port}:{cfg.http.port}" in anomon["ports"]
        mounts = _mounts(anomon)
        command = anomon["command"]
        config = _deploy_file(mounts, command[command.index("--config") + 1])
        assert config == SERVICE_CONFIG
        assert _deploy_file(mounts, command[command.index("--cameras") + 1]) == CAMERAS_FILE
        # The store is the deploy/ folder the operator fills; the engine cache a writable named volume.
        assert mounts[str(cfg.model.store)] == ("./store", False)
        engines = str(cfg.model.engine_cache)
        volume, read_only = next(m for t, m in mounts.items() if engines.startswith(t + "/"))
        assert volume in compose["volumes"] and not read_only

    ingest = services["ingest"]
    assert "profiles" not in ingest and "deploy" not in ingest  # runs in either profile, needs no GPU
    assert (
        _deploy_file(_mounts(ingest), ingest["command"][ingest["command"].index("--cameras") + 1])
        == CAMERAS_FILE
    )
    ingest_port = ingest["command"][ingest["command"].index("--http-port") + 1]
    assert f":{ingest_port}/healthz" in ingest["healthcheck"]["test"][-1]

    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # bind mounts: the rest are named volumes
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    host, port = anomon["environment"]["ANOMON__KAFKA__BOOTSTRAP_SERVERS"].split(":")
    assert host == "kafka" and f"kafka:{port}" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert cfg.kafka.bootstrap_servers == f"kafka:{port}"

    scrape = _yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape}
    assert targets["anomon"] == [f"anomon:{cfg.http.port}"]
    assert targets["anomon-ingest"] == [f"ingest:{ingest_port}"]
    alerting = _yaml(DEPLOY / "prometheus" / "prometheus.yml")["alerting"]["alertmanagers"]
    alertmanager = services["alertmanager"]
    am_port = alertmanager["ports"][0].split(":")[1]
    assert [t for a in alerting for t in a["static_configs"][0]["targets"]] == [f"alertmanager:{am_port}"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in alertmanager["volumes"]}
    config_flag = next(c for c in alertmanager["command"] if c.startswith("--config.file="))
    assert mounted[config_flag.split("=", 1)[1]] == "./alertmanager/alertmanager.yml"
    datasource = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    prometheus_port = services["prometheus"]["ports"][0].split(":")[1]
    assert datasource["datasources"][0]["url"] == f"http://prometheus:{prometheus_port}"


def test_dockerfiles_copy_what_exists_and_expose_the_metrics_port() -> None:
    port = _service_config().http.port
    bases = {}
    for path in sorted((DEPLOY / "docker").glob("Dockerfile*")):
        text = path.read_text()
        bases[path.name] = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)  # type: ignore[union-attr]
        for source in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", text, re.M):
            for item in source.split():
                assert (REPO / item).exists(), f"{path.name} copies {item}, which is not in the repo"
        assert f"EXPOSE {port}" in text
        assert '"--config", "/etc/anomon/anomon.yaml"' in text
        # The engine cache folder exists, owned by the service user, so a fresh volume there is writable.
        assert f"mkdir -p {_service_config().model.engine_cache}" in text and "chown -R anomon" in text
    assert bases["Dockerfile"].startswith("nvcr.io/nvidia/tensorrt:")
    assert bases["Dockerfile.jetson"].startswith("nvcr.io/nvidia/l4t-jetpack:")
    assert bases["Dockerfile.cpu"].startswith("python:3.1")


def test_k8s_manifests_request_a_gpu_and_agree_with_the_config() -> None:
    docs = _k8s_docs()
    kinds = {kind for kind, _ in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "ServiceMonitor"} <= kinds
    kustomization = _yaml(DEPLOY / "k8s" / "kustomization.yaml")
    assert all((DEPLOY / "k8s" / r).is_file() for r in kustomization["resources"])
    assert {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"} == set(
        kustomization["resources"]
    )

    # One source of truth for each file: the ConfigMaps carry deploy/config/anomon.yaml and cameras.yaml.
    assert docs["ConfigMap", "anomon-config"]["data"]["anomon.yaml"] == SERVICE_CONFIG.read_text()
    assert docs["ConfigMap", "anomon-cameras"]["data"]["cameras.yaml"] == CAMERAS_FILE.read_text()
    cfg = _service_config()
    port = cfg.http.port
    compose = _yaml(DEPLOY / "docker-compose.yml")["services"]

    pod = docs["Deployment", "anomon"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["ports"][0]["containerPort"] == port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert container["args"] == [
        "run", "--config", f"{mounts['config']['mountPath']}/anomon.yaml",
        "--cameras", f"{mounts['config']['mountPath']}/cameras.yaml",
    ]  # fmt: skip
    projected = {s["configMap"]["name"] for s in volumes["config"]["projected"]["sources"]}
    assert projected == {"anomon-config", "anomon-cameras"}
    assert mounts["store"]["mountPath"] == str(cfg.model.store) and "hostPath" in volumes["store"]
    assert str(cfg.model.engine_cache).startswith(mounts["engines"]["mountPath"] + "/")
    assert not mounts["engines"].get("readOnly")

    service = docs["Service", "anomon"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["ports"][0]["port"] == port and service["ports"][0]["targetPort"] == "metrics"
    monitor = docs["ServiceMonitor", "anomon"]["spec"]
    assert monitor["endpoints"][0]["port"] == "metrics"
    assert (
        monitor["selector"]["matchLabels"].items() <= docs["Service", "anomon"]["metadata"]["labels"].items()
    )
    assert container["image"] == compose["anomon"]["image"]

    # The ingest Deployment: the compose service's command and image, the same cameras ConfigMap.
    ingest_pod = docs["Deployment", "anomon-ingest"]["spec"]["template"]
    ingest = ingest_pod["spec"]["containers"][0]
    assert ingest["args"] == compose["ingest"]["command"] and ingest["image"] == compose["ingest"]["image"]
    assert ingest_pod["spec"]["volumes"][0]["configMap"]["name"] == "anomon-cameras"
    assert "nvidia.com/gpu" not in ingest["resources"]["limits"]
    ingest_port = int(ingest["args"][ingest["args"].index("--http-port") + 1])
    assert ingest["ports"][0]["containerPort"] == ingest_port
    assert docs["Service", "anomon-ingest"]["spec"]["ports"][0]["port"] == ingest_port
    assert docs["ServiceMonitor", "anomon-ingest"]["spec"]["jobLabel"] == "app.kubernetes.io/name"


def test_dashboard_uses_the_provisioned_datasource_and_a_camera_variable() -> None:
    assert DASHBOARDS
    provisioned = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    uid = provisioned["datasources"][0]["uid"]
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "anomon.yml")
    compose = _yaml(DEPLOY / "docker-compose.yml")["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in compose
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["schemaVersion"] >= 36
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["camera"]["datasource"]["uid"] == uid
        assert "label_values(anomon_frames_processed_total, camera)" in json.dumps(variables["camera"])
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == uid, panel["title"]
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        used = {name for expr in _dashboard_exprs(dashboard) for name in METRIC_NAME.findall(expr)}
        assert used >= REQUIRED_ON_DASHBOARD, REQUIRED_ON_DASHBOARD - used


def test_dashboards_and_rules_name_only_exported_metrics() -> None:
    exported = _exported_names()
    rules = _yaml(RULES)["groups"][0]["rules"]
    exprs = [r["expr"] for r in rules] + [
        e for p in DASHBOARDS for e in _dashboard_exprs(json.loads(p.read_text()))
    ]
    unknown = {name for expr in exprs for name in METRIC_NAME.findall(expr)} - exported
    assert not unknown, f"not exported by ServiceMetrics: {sorted(unknown)}"


def test_alert_rules_cover_the_operator_questions() -> None:
    rules = _yaml(RULES)["groups"][0]["rules"]
    assert {r["alert"] for r in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_the_operations_docs_list_every_alert_rule_with_its_severity() -> None:
    table = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"^\| (Anomon\w+) \|.*\| (\w+) \|$", (REPO / "docs" / "operations.md").read_text(), re.M
        )
    }
    rules = {r["alert"]: r["labels"]["severity"] for r in _yaml(RULES)["groups"][0]["rules"]}
    assert table == rules


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH: apt-get install prometheus (.ci/run does)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY)


@needs_promtool
def test_promtool_checks_config_and_rules() -> None:
    config = _promtool("check", "config", "prometheus/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr
    rules = _promtool("check", "rules", str(RULES.relative_to(DEPLOY)))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    count = len(_yaml(RULES)["groups"][0]["rules"])
    assert f"{count} rules found" in rules.stdout + rules.stderr


@needs_promtool
def test_alert_rules_fire_on_their_unit_tests() -> None:
    result = _promtool("test", "rules", "prometheus/tests/anomon.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool not on PATH: apt-get install prometheus-alertmanager (.ci/run does)"
)


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY)


@needs_amtool
def test_amtool_checks_the_alertmanager_config() -> None:
    result = _amtool("check-config", str(ALERTMANAGER_CONFIG.relative_to(DEPLOY)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "2 receivers" in result.stdout


@needs_amtool
def test_every_alert_rule_routes_to_a_receiver_by_its_severity() -> None:
    """Critical alerts page; warnings and info go to the operators' channel."""
    expected = {"critical": "pager", "warning": "operators", "info": "operators"}
    receivers = {r["name"] for r in _yaml(ALERTMANAGER_CONFIG)["receivers"]}
    assert set(expected.values()) == receivers
    for rule in _yaml(RULES)["groups"][0]["rules"]:
        severity = rule["labels"]["severity"]
        result = _amtool(
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG.relative_to(DEPLOY)}",
            f"--verify.receivers={expected[severity]}",
            f"alertname={rule['alert']}",
            f"severity={severity}",
            "instance=edge-1:9108",
        )
        assert result.returncode == 0, f"{rule['alert']}: {result.stdout}{result.stderr}"
