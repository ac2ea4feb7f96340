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

from monitor.config import ServiceConfig, load_service_config
from monitor.metrics import ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SERVICE_CONFIG = DEPLOY / "config" / "anomon.yaml"
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
}
METRIC_NAME = re.compile(r"\banomon_[a-z_]+\b")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _k8s_docs() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _service_config() -> ServiceConfig:
    return load_service_config(SERVICE_CONFIG, environ={})


def _exported_names() -> set[str]:
    """Every series name ServiceMetrics can export (counters with _total, histograms' parts)."""
    names = set()
    for family in ServiceMetrics().registry.collect():
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
    assert cfg.model.artifact == Path("/models/anomem")


def test_compose_references_existing_files_and_consistent_ports() -> None:
    compose = _yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    assert {"kafka", "anomon", "prometheus", "alertmanager", "grafana"} <= set(services)
    cfg = _service_config()

    anomon = services["anomon"]
    assert (DEPLOY / anomon["build"]["context"] / anomon["build"]["dockerfile"]).is_file()
    gpu = anomon["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert f"{cfg.http.port}:{cfg.http.port}" in anomon["ports"]
    assert anomon["command"][-1] in {v.split(":")[1] for v in anomon["volumes"]}

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
    targets = [
        t for job in scrape if job["job_name"] == "anomon" for t in job["static_configs"][0]["targets"]
    ]
    assert targets == [f"anomon:{cfg.http.port}"]
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
    assert bases["Dockerfile"].startswith("nvcr.io/nvidia/tensorrt:")
    assert bases["Dockerfile.jetson"].startswith("nvcr.io/nvidia/l4t-jetpack:")


def test_k8s_manifests_request_a_gpu_and_agree_with_the_config() -> None:
    docs = {doc["kind"]: doc for doc in _k8s_docs()}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "ServiceMonitor"} <= set(docs)
    kustomization = _yaml(DEPLOY / "k8s" / "kustomization.yaml")
    assert all((DEPLOY / "k8s" / r).is_file() for r in kustomization["resources"])

    # One source of truth for the service config: the ConfigMap carries deploy/config/anomon.yaml.
    assert docs["ConfigMap"]["data"]["anomon.yaml"] == SERVICE_CONFIG.read_text()
    port = _service_config().http.port

    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["ports"][0]["containerPort"] == port
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"][-1] == f"{mount['mountPath']}/anomon.yaml"
    assert pod["spec"]["volumes"][0]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]

    service = docs["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["ports"][0]["port"] == port and service["ports"][0]["targetPort"] == "metrics"
    monitor = docs["ServiceMonitor"]["spec"]
    assert monitor["endpoints"][0]["port"] == "metrics"
    assert monitor["selector"]["matchLabels"].items() <= docs["Service"]["metadata"]["labels"].items()
    compose_image = _yaml(DEPLOY / "docker-compose.yml")["services"]["anomon"]["image"]
    assert container["image"] == compose_image


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
