"""The per-rank Prometheus exporter over real HTTP: values, file_sd target, end-of-run linger, port errors.

The ledger here records nothing (no process group); tests/integration/test_prometheus.py checks the
communication counters against real runs through a real Prometheus.
"""

import json
import socket
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from pitdist.config import ConfigError, load_config
from pitdist.observe import prometheus
from pitdist.observe.ledger import CommLedger
from pitdist.observe.prometheus import ExporterError, PrometheusExporter, metrics_exporter, model_label

MESH = SimpleNamespace(rank=1, world_size=2, dp=1, sp=2, dp_rank=0, sp_rank=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exporter(tmp_path, base: int, *extra: str) -> PrometheusExporter:
    cfg = load_config(
        None,
        [
            "--metrics.prometheus_port",
            str(base),
            "--metrics.peak_tflops",
            "0.5",
            "--metrics.prometheus_sd_dir",
            str(tmp_path / "targets"),
            "--train.batch_size",
            "32",
            "--model.pos_embed",
            "learned",
            "--model.shard_pos_embed",
            "true",
            *extra,
        ],
    )
    return PrometheusExporter(
        cfg, MESH, "run-a", CommLedger(1), 0.0, tokens_per_image=64, image_flops=1e9, device=torch.device("cpu")
    )


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}


def test_serves_the_last_step_and_its_file_sd_target(tmp_path):
    base = free_port() - 1  # rank 1 serves at base + 1
    ex = exporter(tmp_path, base, "--metrics.prometheus_linger_s", "0")
    try:
        ex.on_step(0, 2.5, 0.5, 0.1)
        ex.on_step(1, 2.0, 0.25, 0.05)
        got = scrape(base + 1)
        labels = {
            "run": "run-a",
            "rank": "1",
            "dp_rank": "0",
            "sp_rank": "1",
            "pos_embed": "learned-sharded",
            "model": "nano",
        }
        assert got["pitdist_loss"].labels == labels and got["pitdist_loss"].value == 2.0
        assert got["pitdist_step"].value == 2 and got["pitdist_steps_total"].value == 2
        assert (
            got["pitdist_step_seconds_total"].value == 0.75
            and got["pitdist_data_wait_seconds_total"].value == 0.1 + 0.05
        )
        assert got["pitdist_images_total"].value == 64  # 32 images a step for the one DP group
        assert got["pitdist_tokens_total"].value == 2 * 32 * 64 / 2  # this rank's half of the tokens
        assert got["pitdist_images_per_second"].value == 128  # 32 images in 0.25 s
        assert got["pitdist_achieved_flops"].value == 128 * 1e9 / 2  # per device
        assert got["pitdist_mfu"].value == pytest.approx(64e9 / 0.5e12)
        assert got["pitdist_run_info"].labels["sp"] == "2"
        target = json.loads((tmp_path / "targets" / "pitdist-run-a-rank1.json").read_text())
        assert target == [{"targets": [f"127.0.0.1:{base + 1}"], "labels": {}}]
    finally:
        ex.close()
    assert not (tmp_path / "targets" / "pitdist-run-a-rank1.json").exists()
    with pytest.raises(OSError):
        scrape(base + 1)


def test_close_waits_for_a_scrape_of_the_final_values(tmp_path):
    base = free_port() - 1
    ex = exporter(tmp_path, base, "--metrics.prometheus_linger_s", "60")
    scrape(base + 1)  # Prometheus has found this rank
    ex.on_step(0, 1.0, 0.1, 0.0)
    seen = {}
    scraper = threading.Timer(1.0, lambda: seen.update(scrape(base + 1)))
    scraper.start()
    start = time.monotonic()
    ex.close()
    assert 0.9 < time.monotonic() - start < 30  # returned at the scrape, long before the 60 s linger
    scraper.join(timeout=30)  # close() returns once the response is served; the scraper may still be parsing it
    assert seen["pitdist_steps_total"].value == 1


def test_close_gives_up_after_the_linger_and_says_so(tmp_path, capsys):
    base = free_port() - 1
    ex = exporter(tmp_path, base, "--metrics.prometheus_linger_s", "0.5")
    scrape(base + 1)
    ex.on_step(0, 1.0, 0.1, 0.0)
    start = time.monotonic()
    ex.close()
    assert time.monotonic() - start >= 0.5
    assert "no scrape of 127.0.0.1" in capsys.readouterr().err


def test_a_failed_rank_withdraws_its_target_without_waiting(tmp_path):
    base = free_port() - 1
    ex = exporter(tmp_path, base, "--metrics.prometheus_linger_s", "60")
    scrape(base + 1)  # scraped, so a normal close would wait for the final values
    ex.on_step(0, 1.0, 0.1, 0.0)
    start = time.monotonic()
    ex.close(wait=False)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "targets" / "pitdist-run-a-rank1.json").exists()


def test_a_rank_nobody_scraped_does_not_wait_at_the_end(tmp_path):
    ex = exporter(tmp_path, free_port() - 1, "--metrics.prometheus_linger_s", "60")
    start = time.monotonic()
    ex.close()
    assert time.monotonic() - start < 10


def test_a_rank_waits_for_its_first_scrape_before_training(tmp_path, capsys):
    base = free_port() - 1
    cfg = load_config(None, ["--metrics.prometheus_port", str(base), "--metrics.prometheus_linger_s", "60"])
    threading.Timer(1.0, lambda: scrape(base + 1)).start()
    start = time.monotonic()
    ex = metrics_exporter(
        cfg, MESH, "r", CommLedger(1), 0.0, tokens_per_image=1, image_flops=1.0, device=torch.device("cpu")
    )
    assert 0.9 < time.monotonic() - start < 30
    threading.Timer(0.5, lambda: scrape(base + 1)).start()
    ex.close()
    # Nobody scraping: a warning, then training goes on.
    cfg = load_config(None, ["--metrics.prometheus_port", str(free_port() - 1), "--metrics.prometheus_linger_s", "0.3"])
    ex = metrics_exporter(
        cfg, MESH, "r", CommLedger(1), 0.0, tokens_per_image=1, image_flops=1.0, device=torch.device("cpu")
    )
    ex.close()
    assert "no scrape of 127.0.0.1" in capsys.readouterr().err


def test_a_port_in_use_names_the_port_and_the_setting(tmp_path, monkeypatch):
    monkeypatch.setattr(prometheus, "BIND_RETRY_S", 0.5)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ExporterError, match=rf"metrics.prometheus_port: rank 1 .*127.0.0.1:{port}"):
            exporter(tmp_path, port - 1)


def test_bind_retries_while_a_previous_rank_still_holds_the_port(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    threading.Timer(1.0, holder.close).start()  # the old worker exits a second later
    ex = exporter(tmp_path, port - 1, "--metrics.prometheus_linger_s", "0")
    try:
        assert scrape(port)["pitdist_steps_total"].value == 0
    finally:
        ex.close()


def test_off_by_default_and_bad_settings_are_refused():
    cfg = load_config(None, [])
    assert cfg.metrics.prometheus_port == 0
    assert isinstance(
        metrics_exporter(
            cfg, MESH, "r", CommLedger(0), 0.0, tokens_per_image=1, image_flops=1.0, device=torch.device("cpu")
        ),
        prometheus.NoExporter,
    )
    with pytest.raises(ConfigError, match="metrics.prometheus_port"):
        load_config(None, ["--metrics.prometheus_port", "70000"])
    with pytest.raises(ConfigError, match="metrics.prometheus_linger_s"):
        load_config(None, ["--metrics.prometheus_linger_s", "-1"])


def test_model_label_names_overridden_shapes():
    assert model_label(load_config(None, []).model) == "nano"
    assert model_label(load_config(None, ["--model.dim", "96"]).model) == "nano-d96-l4-h4"
    assert model_label(load_config(None, ["--model.patch_size", "4"]).model) == "nano-p4"


def test_known_gpus_get_their_own_peak_and_unknown_ones_none():
    # torch.cuda.get_device_name spellings; "H20" is a substring of "H200", so the order matters.
    assert prometheus.known_peak_tflops("NVIDIA H200") == 989.0
    assert prometheus.known_peak_tflops("NVIDIA H20") == 148.0
    assert prometheus.known_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert prometheus.known_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert prometheus.known_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert prometheus.known_peak_tflops("NVIDIA GeForce RTX 4090") is None
