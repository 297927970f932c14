"""Deployment files parse and agree with each other and with the gateway's config.

No Kubernetes schema validator works offline from the package registries here, so the
manifests are parsed and their required fields and cross-references checked; nginx's
own `-t` checks the rendered config.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from deploy.nginx.render import render
from gateway.config import parse_config
from tests.support import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"


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
    cfg = parse_config(toml, env={"GATEWAY_CLIENT_KEY": "k", "OPENAI_API_KEY": "o"})
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > cfg.server.drain_timeout_s + pre_stop
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert secret_keys <= set(d["Secret/responses-gateway"]["stringData"])
    kustomization = d["Kustomization/kustomization"]
    assert all((K8S / r).exists() for r in kustomization["resources"])


def test_compose_names_three_gateways_redis_and_nginx() -> None:
    compose = yaml.safe_load((REPO_ROOT / "deploy" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"redis", "gateway-1", "gateway-2", "gateway-3", "nginx"}
    parse_config((REPO_ROOT / "deploy" / "gateway.compose.toml").read_text(), env={})


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
