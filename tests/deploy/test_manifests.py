"""Deployment files parse, pass their tools' own checks, and agree with each other and
with the gateway's config: Kubernetes schemas (kubernetes-validate, strict, offline),
`nginx -t`, `promtool check rules`, the Grafana dashboard model, the compose wiring.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import msgspec
import pytest
import yaml

from deploy.nginx.render import render
from gateway.config import Config, parse_config
from gateway.telemetry import Metrics
from tests.support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_ENV = {"GATEWAY_CLIENT_KEY": "k", "OPENAI_API_KEY": "o", "REDIS_URL": "redis://redis:6379/0"}
GIB = 1024**3


def docs() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind"} <= set(doc), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path
            found[f"{doc['kind']}/{doc.get('metadata', {}).get('name', path.stem)}"] = doc
    return found


def test_deployment_probes_ports_drain_and_pdb_agree() -> None:
    d = docs()
    deploy = d["Deployment/responses-gateway"]
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = container["ports"][0]["containerPort"]
    assert d["Service/responses-gateway"]["spec"]["ports"][0]["targetPort"] == port
    assert d["Service/responses-gateway-headless"]["spec"]["clusterIP"] == "None"
    labels = pod["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"] == labels
    assert d["PodDisruptionBudget/responses-gateway"]["spec"]["selector"]["matchLabels"] == labels
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    toml = d["ConfigMap/responses-gateway"]["data"]["gateway.toml"]
    cfg = parse_config(toml, env=K8S_ENV)
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > cfg.server.drain_timeout_s + pre_stop
    secret_keys = {
        e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_keys <= set(d["Secret/responses-gateway"]["stringData"])
    kustomization = d["Kustomization/kustomization"]
    assert all((K8S / r).exists() for r in kustomization["resources"])


def test_compose_names_three_gateways_redis_nginx_and_the_simulator() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {
        "redis",
        "sim",
        "gateway-1",
        "gateway-2",
        "gateway-3",
        "nginx",
    }


def test_dockerfile_runs_non_root_with_healthcheck() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text()
    user = [line for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split()[1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text and "STOPSIGNAL SIGTERM" in text


def test_rendered_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(18080, str(tmp_path), ["127.0.0.1:18081", "127.0.0.1:18082"]))
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    text = conf.read_text()
    assert "underscores_in_headers on;" in text and "hash $affinity consistent;" in text
    compose_conf = (REPO_ROOT / "deploy" / "nginx" / "nginx.compose.conf").read_text()
    assert "server gateway-1:8080" in compose_conf


# -- Kubernetes ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifest_passes_strict_schema_validation(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] == "Kustomization":
            continue  # not a cluster resource: no schema; its resources are checked
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    deploy = docs()["Deployment/responses-gateway"]
    broken = json.loads(json.dumps(deploy))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def _quantity_bytes(text: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": GIB}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return int(text)


def test_pod_meets_restricted_pod_security_and_memory_covers_the_transcript_cap() -> None:
    d = docs()
    pod = d["Deployment/responses-gateway"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    cfg = parse_config(d["ConfigMap/responses-gateway"]["data"]["gateway.toml"], env=K8S_ENV)
    limit = _quantity_bytes(container["resources"]["limits"]["memory"])
    # the transcripts plus room for the process itself
    assert limit >= cfg.openai_ws.transcript_max_bytes_total + 512 * 1024**2
    assert container["readinessProbe"]["failureThreshold"] >= 2
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts  # writable scratch on a read-only root


def test_ingress_keeps_turns_alive_hashes_sessions_and_hides_metrics() -> None:
    ingress = docs()["Ingress/responses-gateway"]
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert int(notes[prefix + "proxy-read-timeout"]) >= 3600
    assert int(notes[prefix + "proxy-send-timeout"]) >= 3600
    assert notes[prefix + "upstream-hash-by"] == "$http_session_id"
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/v1/responses", "/backend-api/codex/responses"]
    service = docs()["Service/responses-gateway"]
    backends = {
        p["backend"]["service"]["name"]
        for rule in ingress["spec"]["rules"]
        for p in rule["http"]["paths"]
    }
    assert backends == {service["metadata"]["name"]}


# -- compose ---------------------------------------------------------------------------------
def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def test_compose_gateways_reach_an_upstream_defined_in_the_stack() -> None:
    services = _compose()["services"]
    cfg = parse_config((DEPLOY / "gateway.compose.toml").read_text(), env={})
    for account in cfg.accounts:
        host = re.match(r"https?://([^:/]+)", account.base_url)
        assert host is not None and host.group(1) in services, account.base_url
        assert host.group(1) not in ("127.0.0.1", "localhost")
    redis_host = re.match(r"redis://([^:/]+)", cfg.statestore.url)
    assert redis_host is not None and redis_host.group(1) in services
    upstream = services[host.group(1)]
    assert upstream["build"] == services["gateway-1"]["build"]  # the same image
    assert "sim" in upstream["command"]
    port = account.base_url.split(":")[2].split("/")[0]
    assert "--port" in upstream["command"] and port in upstream["command"]


def test_compose_services_have_healthchecks_and_wait_for_healthy_dependencies() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        if name != "nginx":
            assert service["healthcheck"]["test"], name
        for dep, condition in (service.get("depends_on") or {}).items():
            assert dep in services and condition == {"condition": "service_healthy"}, name
    assert set(services["gateway-1"]["depends_on"]) == {"redis", "sim"}
    assert set(services["nginx"]["depends_on"]) == {"gateway-1", "gateway-2", "gateway-3"}


def test_compose_config_lists_only_what_differs_from_the_defaults() -> None:
    raw = tomllib.loads((DEPLOY / "gateway.compose.toml").read_text())
    defaults = msgspec.to_builtins(Config())
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert defaults[section][key] != value, f"{section}.{key} repeats the default"
    assert set(raw) <= {"clients", "accounts", "statestore"}


def test_compose_nginx_config_is_the_rendered_template() -> None:
    rendered = render("0.0.0.0:8080", "/tmp", [f"gateway-{i}:8080" for i in (1, 2, 3)])
    shipped = (DEPLOY / "nginx" / "nginx.compose.conf").read_text()
    assert shipped.splitlines()[2:] == rendered.splitlines()[2:]


def test_nginx_is_sized_for_three_thousand_sockets_and_keeps_metrics_internal() -> None:
    text = render(18080, "/tmp/x", ["127.0.0.1:1"])
    conns = int(re.search(r"worker_connections (\d+);", text).group(1))  # type: ignore[union-attr]
    nofile = int(re.search(r"worker_rlimit_nofile (\d+);", text).group(1))  # type: ignore[union-attr]
    # one worker alone must hold 3 x 1,000 client sockets and their upstream sockets
    assert conns >= 2 * 3 * 1000 and nofile >= conns
    assert re.search(r"location = /metrics \{\s*return 404;", text)


# -- Prometheus rules and Grafana dashboard ---------------------------------------------------
def _metric_names() -> set[str]:
    names = set()
    for family in Metrics(accounts=["a"]).registry.collect():
        names.update(sample.name for sample in family.samples)
    return names


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make system-deps` installs Debian's prometheus"
    done = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yaml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_alert_rules_use_only_series_the_gateway_exports() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    used = {
        name
        for group in doc["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\b(gateway_[a-z_]+|process_[a-z_]+)", rule["expr"])
    }
    assert used - _metric_names() == set()


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DEPLOY / "grafana" / "responses-gateway.json").read_text())
    return doc


def _keys_lost(written: Any, decoded: Any, path: str = "$") -> list[str]:
    """Keys of ``written`` that the typed dashboard model did not keep (unknown to it)."""
    if isinstance(written, dict):
        if not isinstance(decoded, dict):
            return [path]
        lost = []
        for key, value in written.items():
            lost += (
                [f"{path}.{key}"]
                if key not in decoded
                else _keys_lost(value, decoded[key], f"{path}.{key}")
            )
        return lost
    if isinstance(written, list):
        if not isinstance(decoded, list) or len(written) != len(decoded):
            return [path]
        return [
            k
            for i, (a, b) in enumerate(zip(written, decoded, strict=True))
            for k in _keys_lost(a, b, f"{path}[{i}]")
        ]
    return []


def _decode_dashboard(doc: dict[str, Any]) -> Any:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    return json.loads(json.dumps(Dashboard.from_json(doc).to_json(), cls=JSONEncoder))


def test_dashboard_loads_into_the_grafana_dashboard_model() -> None:
    doc = _dashboard()
    assert _keys_lost(doc, _decode_dashboard(doc)) == []
    typo = json.loads(json.dumps(doc))
    typo["panels"][1]["titel"] = "x"
    assert _keys_lost(typo, _decode_dashboard(typo)) == ["$.panels[1].titel"]


def test_dashboard_shows_the_operator_views_from_exported_series() -> None:
    panels = [p for p in _dashboard()["panels"] if p["type"] != "row"]
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (
        "gateway_turns_total",  # turns by outcome
        "gateway_ttft_seconds_bucket",
        "gateway_added_latency_seconds_bucket",
        "gateway_pool_connections",
        "gateway_retry_attempts_total",
        "gateway_http_fallbacks_total",
        "gateway_statestore_errors_total",
    ):
        assert needed in exprs
    used = set(re.findall(r"\b(gateway_[a-z_]+|process_[a-z_]+)", exprs))
    assert used - _metric_names() == set()
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))
