"""deploy/: the compose file is accepted by Docker Compose, and its pieces fit together."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import yaml
from metrics_helpers import DASHBOARD, DEPLOY

from mcpmeter import settings

COMPOSE_FILE = DEPLOY / "docker-compose.yml"


def compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else `docker-compose`; never skipped."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    assert legacy, "no Docker Compose: run `make test` (it installs Debian's docker-compose), or install the compose plugin"
    return [legacy]


def rendered() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCPMETER_", "OTEL_", "GRAFANA_"))}  # the defaults
    done = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "config"], capture_output=True, timeout=120, env=env)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    return yaml.safe_load(done.stdout)


def test_docker_compose_accepts_the_file_and_it_runs_collector_prometheus_grafana():
    config = rendered()
    services = config["services"]
    assert set(services) == {"collector", "prometheus", "grafana"}

    collector = services["collector"]
    dockerfile = DEPLOY.parent / collector["build"]["dockerfile"]
    assert dockerfile.is_file()
    env = collector["environment"]
    for name in env:
        assert name.startswith(("OTEL_", "MCPMETER_API_KEY_")) or name in settings.SETTINGS, name
    metrics_port = env["MCPMETER_METRICS_PORT"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"collector:{metrics_port}"]
    key_path = job["authorization"]["credentials_file"]
    assert env["MCPMETER_METRICS_KEY_FILE"] == key_path  # both read the same secret
    assert key_path == "/run/secrets/metrics_key" and "metrics_key" in config["secrets"]
    assert all(any(s["source"] == "metrics_key" for s in services[n]["secrets"]) for n in ("collector", "prometheus"))

    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if v.startswith("/")}
    assert mounts["/etc/prometheus/prometheus.yml"].endswith("deploy/prometheus/prometheus.yml")
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if v.startswith("/")}
    assert grafana["/etc/grafana/provisioning"].endswith("deploy/grafana/provisioning")
    dashboards_dir = grafana["/var/lib/grafana/dashboards/mcpmeter"]
    assert dashboards_dir.endswith("deploy/grafana/dashboards")
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/mcpmeter/" + DASHBOARD.name


def test_grafana_provisioning_points_at_the_dashboard_and_its_datasource():
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "mcpmeter.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards/mcpmeter"

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] == "MCP Analytics" and dashboard["uid"]
    uids = set()

    def walk(node):
        if isinstance(node, dict):
            if "datasource" in node and isinstance(node["datasource"], dict):
                uids.add(node["datasource"]["uid"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    assert uids == {source["uid"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dashboard["panels"])
    for section in ("Protocol activity", "Tool calls and errors", "Latency", "Discovery", "Auth flow", "Collector health"):
        assert section in titles


def test_the_collector_image_serves_both_ports():
    text = (DEPLOY / "collector.Dockerfile").read_text()
    assert re.search(r"^EXPOSE 8890 9465$", text, re.M)
    assert "MCPMETER_METRICS_PORT=9465" in text and "MCPMETER_HOST=0.0.0.0" in text
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (DEPLOY.parent / path).exists(), path
    assert '"mcpmeter", "serve"' in text
