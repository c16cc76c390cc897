"""pitdist's metrics through a real Prometheus: scraped counters equal the ledger, every dashboard query
returns data, `comm-report --prometheus` matches `comm-report --run`, and the cluster config is valid.

Prometheus is Debian's `prometheus` package (scripts/setup.sh --test installs it). The server runs on
127.0.0.1 with its own storage, a 1 s scrape interval and the scrape jobs of
cluster/prometheus/prometheus.yml, their discovery files moved into the test's directory; the ranks
are found through the file_sd directory they write, as in a deployment.
"""

import json
import math
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pitdist.observe.categories import Totals
from pitdist.report import dashboard
from pitdist.report.comm_report import load_run, summarize
from pitdist.report.prometheus_query import comm_totals, live_summary, query

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = ROOT / "cluster" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "cluster" / "grafana"
VARIANTS = ("none", "sincos", "learned")
STEPS = 40


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: `bash scripts/setup.sh --test` installs Debian's prometheus package"
    return path


def ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_base(count: int) -> int:
    """A base port with ``count`` free ports, below the ephemeral range and above Ray's worker ports."""
    for _ in range(200):
        base = random.randrange(20000, 30000)
        if ports_free(*range(base, base + count)):
            return base
    raise RuntimeError("no free port range found")


# --- cheap checks --------------------------------------------------------------------------------


def test_promtool_accepts_the_cluster_config():
    proc = subprocess.run([binary("promtool"), "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]}
    assert set(jobs) == {"ray", "pitdist"}
    # Ray's nodes from one source only (its service-discovery file), or every Ray series counts twice.
    assert list(jobs["ray"]) == ["job_name", "file_sd_configs"]
    assert jobs["ray"]["file_sd_configs"][0]["files"][0].endswith("/prom_metrics_service_discovery.json")
    assert jobs["pitdist"]["file_sd_configs"][0]["files"] == ["targets/*.json"]
    assert (PROMETHEUS_YML.parent / "targets").is_dir()


def test_committed_dashboard_is_the_generators_output():
    committed = (GRAFANA / "dashboards" / "pitdist.json").read_text()
    assert committed == dashboard.render(), (
        "cluster/grafana/dashboards/pitdist.json is stale: "
        "python -m pitdist.report.dashboard > cluster/grafana/dashboards/pitdist.json"
    )
    board = json.loads(committed)
    assert [link["url"] for link in board["links"]] == [
        "/d/rayDefaultDashboard",
        "/d/rayTrainDashboard",
        "/d/rayDataDashboard",
    ]
    titles = " | ".join(p["title"] for p in board["panels"])
    for needed in (
        "by cause",
        "PE variant",
        "all-to-all vs gradient",
        "imbalance",
        "Images per second",
        "Loss",
        "MFU",
        "Data-loader wait",
        "Memory",
    ):
        assert needed in titles
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_grafana_provisioning_names_the_datasource_and_both_dashboard_folders():
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert sources["apiVersion"] == 1 and source["type"] == "prometheus" and source["url"] == "http://127.0.0.1:9090"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert {p["name"]: p["type"] for p in providers} == {"pitdist": "file", "Ray": "file"}
    assert all(p["options"]["path"].startswith("/") for p in providers)
    board = json.loads((GRAFANA / "dashboards" / "pitdist.json").read_text())
    datasource = board["templating"]["list"][0]
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"


# --- a real Prometheus and real runs -------------------------------------------------------------


def scrape_config(tmp: Path) -> Path:
    """cluster/prometheus/prometheus.yml with a 1 s scrape and its discovery files under ``tmp``."""
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    files = {
        "pitdist": str(tmp / "targets" / "*.json"),
        "ray": str(tmp / "ray" / "prom_metrics_service_discovery.json"),
    }
    for job in cfg["scrape_configs"]:
        job["file_sd_configs"] = [{"files": [files[job["job_name"]]]}]
    (tmp / "targets").mkdir()
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def prometheus_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prometheus")
    config = scrape_config(tmp)
    check = subprocess.run([binary("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_base(1)
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready in 60 s"
            time.sleep(0.2)
        yield SimpleNamespace(url=url, targets=tmp / "targets", tmp=tmp)
    finally:
        proc.terminate()  # the PID we started, nothing else
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def runs(prometheus_server):
    """One short SP=2 run per PE variant, each rank exporting, found by Prometheus through file_sd."""
    out = {}
    start = time.time()
    for variant in VARIANTS:
        base = free_base(2)
        output_dir = prometheus_server.tmp / "runs" / variant
        cmd = [
            sys.executable,
            "-m",
            "pitdist.cli",
            "train",
            "--launcher",
            "local",
            "--sp",
            "2",
            "--name",
            f"prom-{variant}",
            "--model.pos_embed",
            variant,
            "--train.steps",
            str(STEPS),
            "--train.log_every",
            "20",
            "--train.output_dir",
            str(output_dir),
            "--metrics.prometheus_port",
            str(base),
            "--metrics.prometheus_sd_dir",
            str(prometheus_server.targets),
            "--metrics.prometheus_linger_s",
            "60",
            "--metrics.peak_tflops",
            "0.05",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        assert "no scrape of" not in proc.stderr, proc.stderr  # every rank's final values were collected
        (run_dir,) = output_dir.iterdir()
        out[variant] = run_dir
    assert not list(prometheus_server.targets.iterdir()), "finished ranks left their file_sd targets behind"
    return SimpleNamespace(dirs=out, start=start, end=time.time())


def ledger_totals(run_dir: Path) -> dict[tuple[int, str, str, str], Totals]:
    out: dict[tuple, Totals] = defaultdict(Totals)
    for record in load_run(run_dir)["ranks"]:
        for r in record["rows"]:
            out[(record["rank"], r["phase"], r["category"], r["op"])].add(
                Totals(r["count"], r["handed_bytes"], r["sent_bytes"], r["seconds"])
            )
    return dict(out)


def by_category(totals: dict) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (_, _, category, _), t in totals.items():
        out[category] += t.sent
    return dict(sorted(out.items()))


def assert_scraped_equals_ledger(url: str, run_dir: Path, ranks: int = 2) -> dict:
    """Every (rank, phase, category, collective) counter in Prometheus equals the run's ledger files."""
    ledger = ledger_totals(run_dir)
    # The last scrape has been answered before the ranks exit; give Prometheus a moment to store it.
    deadline = time.monotonic() + 20
    while True:
        scraped = comm_totals(url, run_dir.name)
        if {k: t.count for k, t in scraped.items()} == {k: t.count for k, t in ledger.items()}:
            break
        assert time.monotonic() < deadline, f"scraped calls never matched the ledger:\n{scraped}\n{ledger}"
        time.sleep(0.5)
    assert set(scraped) == set(ledger)
    assert {r for r, *_ in ledger} == set(range(ranks))
    for key, t in ledger.items():
        got = scraped[key]
        assert (got.count, got.handed, got.sent) == (t.count, t.handed, t.sent), key
        # Seconds are summed in another order (running total vs per-step rows): float rounding only.
        assert got.seconds == pytest.approx(t.seconds, rel=1e-9, abs=1e-12), key
    print(f"\n{run_dir.name}: bytes sent by category, all ranks, whole run")
    print(f"{'category':<18}{'Prometheus':>16}{'ledger':>16}")
    for category, sent in by_category(ledger).items():
        print(f"{category:<18}{by_category(scraped)[category]:>16.0f}{sent:>16.0f}")
    return scraped


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_scraped_comm_counters_equal_the_ledger(prometheus_server, runs, variant):
    run_dir = runs.dirs[variant]
    assert_scraped_equals_ledger(prometheus_server.url, run_dir)
    # The other series are there too, for every rank.
    for metric in ("pitdist_loss", "pitdist_mfu", "pitdist_images_total", "pitdist_data_wait_seconds_total"):
        found = query(prometheus_server.url, f'last_over_time({metric}{{run="{run_dir.name}"}}[1h])')
        assert sorted(r["metric"]["rank"] for r in found) == ["0", "1"], metric
    steps = query(prometheus_server.url, f'last_over_time(pitdist_steps_total{{run="{run_dir.name}"}}[1h])')
    assert [float(r["value"][1]) for r in steps] == [STEPS, STEPS]


@pytest.mark.slow
def test_ray_train_workers_export_the_ledger_too(prometheus_server):
    """Ranks as Ray Train workers (embedded cluster, Ray Data loader), sharded learned table."""
    output_dir = prometheus_server.tmp / "runs" / "ray"
    cmd = [
        sys.executable,
        "-m",
        "pitdist.cli",
        "train",
        "--launcher",
        "ray",
        "--sp",
        "2",
        "--name",
        "prom-ray",
        "--model.pos_embed",
        "learned",
        "--model.shard_pos_embed",
        "true",
        "--train.steps",
        "20",
        "--train.output_dir",
        str(output_dir),
        "--metrics.prometheus_port",
        str(free_base(2)),
        "--metrics.prometheus_sd_dir",
        str(prometheus_server.targets),
        "--metrics.prometheus_linger_s",
        "60",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert "no scrape of" not in proc.stdout + proc.stderr
    (run_dir,) = [d for d in output_dir.iterdir() if (d / "config.json").exists()]
    scraped = assert_scraped_equals_ledger(prometheus_server.url, run_dir)
    assert {k[2] for k in scraped} >= {"attention_a2a", "data"}  # Ray Data: the SP group gathers its batch
    info = query(prometheus_server.url, f'last_over_time(pitdist_run_info{{run="{run_dir.name}"}}[1h])')
    assert {(r["metric"]["launcher"], r["metric"]["pos_embed"]) for r in info} == {("ray", "learned-sharded")}


@pytest.mark.slow
def test_every_dashboard_query_returns_data(prometheus_server, runs):
    names = "|".join(d.name for d in runs.dirs.values())
    for title, expr in dashboard.queries(dashboard.dashboard()):
        promql = expr.replace("$run", names).replace("$__rate_interval", "5s")
        assert "$" not in promql, promql
        params = urllib.parse.urlencode({"query": promql, "start": runs.start, "end": runs.end + 5, "step": "1s"})
        body = json.load(urllib.request.urlopen(f"{prometheus_server.url}/api/v1/query_range?{params}", timeout=30))
        assert body["status"] == "success", (title, promql, body)
        values = [float(v) for series in body["data"]["result"] for _, v in series["values"]]
        assert any(not math.isnan(v) for v in values), f"no data for panel {title!r}: {promql}"
    # The PE-variant panel tells the variants apart: only the learned table adds traffic.
    pe_expr = next(e for t, e in dashboard.queries(dashboard.dashboard()) if t.startswith("Position-embedding"))
    promql = f"max_over_time(({pe_expr.replace('$run', names).replace('$__rate_interval', '5s')})[10m:1s])"
    pe = {r["metric"]["pos_embed"]: float(r["value"][1]) for r in query(prometheus_server.url, promql)}
    assert pe["none"] == pe["sincos"] == 0 and pe["learned"] > 0, pe


@pytest.mark.slow
def test_comm_report_reads_the_same_table_from_prometheus(prometheus_server, runs, pitdist_cli):
    for variant, run_dir in runs.dirs.items():
        live, files = live_summary(prometheus_server.url, run_dir.name), summarize(load_run(run_dir))
        assert live["variant"] == files["variant"] and (live["dp"], live["sp"]) == (files["dp"], files["sp"])
        for live_rows, file_rows in zip(live["rows"], files["rows"], strict=True):

            def measured(rows):
                return {r.category: (r.count, r.handed, r.sent) for r in rows if r.count or r.handed}

            assert measured(live_rows) == measured(file_rows), variant
    ids = [d.name for d in runs.dirs.values()]
    proc = pitdist_cli("comm-report", "--prometheus", prometheus_server.url, "--run-id", *ids, check=True)
    print(proc.stdout)
    assert proc.stdout.count("(from Prometheus)") == 3 and "vs none" in proc.stdout
    for line in ("attention_a2a", "grad_reduce", "pe_grad_reduce"):
        assert line in proc.stdout
    missing = pitdist_cli("comm-report", "--prometheus", prometheus_server.url, "--run-id", "no-such-run")
    assert missing.returncode == 2 and "has no run 'no-such-run'" in missing.stderr
