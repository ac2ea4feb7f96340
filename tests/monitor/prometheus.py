"""A throwaway Prometheus server on loopback with deploy/'s rules (Debian package `prometheus`)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Self

import yaml

from monitor.broker import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = shutil.which("prometheus")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class LoopbackServer:
    """A server process on loopback (a subclass gives `command()`, `log` and `url`), ready when its
    /-/ready answers 200 (as Prometheus and Alertmanager do); stopped on leaving the `with`."""

    url: str
    log: Path

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._log = self.log.open("w")
        self.process = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        name = Path(self.command()[0]).name
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{name} exited: {self.log.read_text()[-2000:]}"
            try:
                if http_get(f"{self.url}/-/ready", 1.0)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready in 30 s: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class PrometheusServer(LoopbackServer):
    """A throwaway Prometheus on loopback with deploy/'s rules, scraping every second deploy/'s jobs
    named in `targets` (job -> host:port; a plain host:port is the `anomon` job); with `alertmanager`
    (host:port), it sends firing alerts there as deploy/'s `alerting:` says."""

    def __init__(self, workdir: Path, targets: str | dict[str, str], alertmanager: str | None = None) -> None:
        deployed = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        targets = {"anomon": targets} if isinstance(targets, str) else targets
        jobs = [j for j in deployed["scrape_configs"] if j["job_name"] in targets]
        assert {j["job_name"] for j in jobs} == set(targets), f"deploy/ has no job for some of {targets}"
        for job in jobs:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DEPLOY / "prometheus" / r) for r in deployed["rule_files"]],
            "scrape_configs": jobs,
        }
        if alertmanager is not None:
            (sender,) = deployed["alerting"]["alertmanagers"]
            sender["static_configs"] = [{"targets": [alertmanager]}]
            config["alerting"] = {"alertmanagers": [sender]}
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.storage = workdir / "tsdb"

    def command(self) -> list[str]:
        assert PROMETHEUS is not None
        return [
            PROMETHEUS,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "success", f"{path} {params}: {doc}"
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", expr
        return list(data["result"])

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else math.nan
