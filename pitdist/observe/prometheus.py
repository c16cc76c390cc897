"""Serve each rank's training and communication metrics to Prometheus while it trains.

Every rank runs its own exporter: a prometheus_client registry served over HTTP at
``metrics.prometheus_host`` : ``metrics.prometheus_port + rank`` (off while the port is 0). A scrape
returns the values of the last finished step:

    pitdist_run_info                      1, labelled with the mesh, ZeRO stage and batch size
    pitdist_step, pitdist_steps_total     last finished step (1-based); steps this process trained
    pitdist_loss                          global mean training loss of the last step
    pitdist_step_seconds(_total)          wall time of the last step; of all steps
    pitdist_data_wait_seconds(_total)     time spent getting the step's batch (part of the step)
    pitdist_images_total, pitdist_tokens_total   this rank's DP group's images; this rank's tokens
    pitdist_images_per_second, pitdist_tokens_per_second   whole job, from the last step's time
    pitdist_achieved_flops                training FLOP/s per device (pitdist.observe.flops)
    pitdist_mfu                           achieved / peak (metrics.peak_tflops; absent when unknown)
    pitdist_memory_bytes{kind}            rss, rss_peak; cuda_allocated, cuda_max_allocated on GPUs
    pitdist_replicated_pe_grad_fraction   share of the engine's gradient elements that belong to a
                                          replicated learned PE table (splits grad_reduce as the
                                          comm report does)
    pitdist_comm_{calls,handed_bytes,sent_bytes,seconds}_total{category, phase, collective}
                                          the communication ledger's running totals

and every series carries run (the run directory's name), rank, dp_rank, sp_rank, pos_embed
(none | sincos | learned | learned-sharded) and model.

Why prometheus_client and not ray.util.metrics (both measured on Ray 2.60 against a real Prometheus,
design notes section 7): Ray's metrics API renames every metric with a ``ray_`` prefix, adds a
per-worker ``WorkerId`` label (a new series each time a worker restarts), exports every 10 s, loses
increments not yet exported when a worker dies and reports histogram sums from bucket midpoints.
The ledger's byte counts must arrive exact, so each rank serves its own endpoint: values are
visible at the next scrape, names are kept, and a restarted worker is an ordinary counter reset that
rate() and increase() handle. The price: Prometheus must find the ranks, either as static targets
or through a file_sd directory each rank writes its target into (``metrics.prometheus_sd_dir``,
watched by cluster/prometheus/prometheus.yml).

The communication counters are the ledger's running totals (CommLedger.cumulative) copied after
every step, not separate bookkeeping, so after a run they equal comm/rank<r>.json.

Short runs: Prometheus finds a new rank only after discovery (file_sd: up to ~5 s) and a scrape
interval, and rates a counter only from its first sample, so a run could train, or end, unseen.
Before the first step each rank waits until it has been scraped once, so rate() and increase() cover
the whole run; ``close`` publishes the final values (evaluation traffic included) and keeps serving
until a scrape has collected them. Each wait is bounded by ``metrics.prometheus_linger_s`` and costs
about one scrape interval (plus discovery at the start) when Prometheus is there; a rank never
scraped at the start does not wait at the end. Not a Pushgateway: pushed series never go stale
(every finished run stays "current" and sum() adds it to live ones), pushed counters lose the reset
semantics rate() relies on, and it is one more service to run; Prometheus recommends it only for
jobs that have no instance to scrape. Any HTTP GET of the endpoint counts as a scrape.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import sys
import threading
import time
from pathlib import Path

import torch

from pitdist.config import JobConfig, ModelConfig

COMMON_LABELS = ("run", "rank", "dp_rank", "sp_rank", "pos_embed", "model")
COMM_LABELS = ("category", "phase", "collective")

# A restarted worker (Ray fault tolerance) can start before the old process has released the port.
BIND_RETRY_S = 10.0

# Dense bf16 tensor-core peaks (TFLOP/s, vendors' data sheets) by device-name substring, first match
# wins (so "H200" before "H20"); V100 has no bf16, its fp16 peak is given. Anything else needs
# metrics.peak_tflops.
GPU_PEAK_TFLOPS = (
    ("B200", 2250.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H20", 148.0),
    ("A100", 312.0),
    ("V100", 125.0),
)


class ExporterError(RuntimeError):
    """The exporter cannot serve (port in use, bad host). The message names the setting."""


def pos_embed_label(cfg: ModelConfig) -> str:
    return "learned-sharded" if cfg.shard_pos_embed else cfg.pos_embed


def model_label(cfg: ModelConfig) -> str:
    """The size preset, or its actual shape when dim/depth/heads override it; ViTs add the patch."""
    label = cfg.size
    if cfg.dim or cfg.depth or cfg.heads:
        label = f"{cfg.size}-d{cfg.width}-l{cfg.num_layers}-h{cfg.num_heads}"
    return label if cfg.patch_size == 1 else f"{label}-p{cfg.patch_size}"


def peak_flops(cfg: JobConfig, device: torch.device) -> float | None:
    """Peak FLOP/s of one device: metrics.peak_tflops, else a known GPU's, else None (no MFU)."""
    if cfg.metrics.peak_tflops:
        return cfg.metrics.peak_tflops * 1e12
    if device.type == "cuda":
        known = known_peak_tflops(torch.cuda.get_device_name(device))
        return known * 1e12 if known else None
    return None


def known_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named ``device_name`` (GPU_PEAK_TFLOPS), None for one not listed."""
    return next((tflops for key, tflops in GPU_PEAK_TFLOPS if key in device_name), None)


def advertised_host(host: str) -> str:
    """The address a Prometheus elsewhere reaches this exporter at (for the file_sd target)."""
    if host not in ("", "0.0.0.0", "::"):
        return host
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return socket.gethostname()


class NoExporter:
    """What the trainer holds when metrics.prometheus_port is 0."""

    def on_step(self, *args, **kwargs) -> None:
        pass

    def close(self, wait: bool = True) -> None:
        pass


class PrometheusExporter:
    """One rank's /metrics endpoint. The training thread publishes; scrape threads read."""

    def __init__(
        self,
        cfg: JobConfig,
        mesh,
        run: str,
        ledger,
        pe_fraction: float,
        *,
        tokens_per_image: int,
        image_flops: float,
        device: torch.device,
    ):
        m = cfg.metrics
        self.cfg, self.ledger, self.device = cfg, ledger, device
        self.rank = mesh.rank
        self.port = m.prometheus_port + mesh.rank
        if self.port > 65535:
            raise ExporterError(
                f"metrics.prometheus_port: {m.prometheus_port} + rank {mesh.rank} = {self.port} is "
                f"not a TCP port; choose a base below {65536 - mesh.world_size}"
            )
        self.labels = (
            run,
            str(mesh.rank),
            str(mesh.dp_rank),
            str(mesh.sp_rank),
            pos_embed_label(cfg.model),
            model_label(cfg.model),
        )
        self.info = {
            "dp": str(mesh.dp),
            "sp": str(mesh.sp),
            "ring": str(getattr(cfg.parallel, "ring", 1) or 1),
            "zero_stage": str(cfg.parallel.zero_stage),
            "batch_size": str(cfg.train.batch_size),
            "tokens_per_image": str(tokens_per_image),
            "launcher": cfg.parallel.launcher,
        }
        self.group_images = cfg.train.batch_size // mesh.dp  # per step, for this rank's DP group
        self.rank_tokens = self.group_images * tokens_per_image // mesh.sp
        self.job_images, self.tokens_per_image = cfg.train.batch_size, tokens_per_image
        self.image_flops, self.world = image_flops, mesh.world_size
        self.peak = peak_flops(cfg, device)
        self.pe_fraction = pe_fraction  # share of the engine's gradient elements that is a replicated PE table

        self._totals = {"steps": 0, "step_seconds": 0.0, "data_wait_seconds": 0.0, "images": 0, "tokens": 0}
        self._last: dict[str, float] = {}
        self._version = 0
        self._snapshot: tuple = (0, {}, {}, {})
        self._served = -1  # the newest snapshot version a scrape has returned
        self._scraped = threading.Condition()
        self.publish()

        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server = self._serve(m.prometheus_host)
        self.target = f"{advertised_host(m.prometheus_host)}:{self.port}"
        self.sd_file = self._write_target(m.prometheus_sd_dir, run) if m.prometheus_sd_dir else None

    # --- serving -------------------------------------------------------------------------------
    def _serve(self, host: str):
        from prometheus_client import start_http_server

        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            try:
                server, _thread = start_http_server(self.port, addr=host, registry=self.registry)
                return server
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                    time.sleep(0.25)  # a restarted rank racing its predecessor: wait for the port
                    continue
                if exc.errno == errno.EADDRINUSE:
                    raise ExporterError(
                        f"metrics.prometheus_port: rank {self.rank} cannot serve its metrics at {host}:{self.port}: "
                        f"the port stayed in use for {BIND_RETRY_S:.0f} s. Rank r uses metrics.prometheus_port + r; "
                        f"choose a base whose next {self.world} ports are free (or stop what holds {self.port})"
                    ) from None
                raise ExporterError(
                    f"metrics.prometheus_host: cannot serve at {host}:{self.port} ({exc}); "
                    f"use 127.0.0.1, 0.0.0.0 or an address of this machine"
                ) from None

    def _write_target(self, sd_dir: str, run: str) -> Path:
        """A file_sd target list naming this rank's endpoint, written atomically."""
        directory = Path(sd_dir).absolute()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"pitdist-{run}-rank{self.rank}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps([{"targets": [self.target], "labels": {}}]))
        os.replace(tmp, path)  # Prometheus never reads a half-written file
        return path

    def collect(self):
        """Called by prometheus_client for every scrape, on the server's thread."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        version, totals, last, comm = self._snapshot  # one reference: a consistent step
        with self._scraped:
            self._served = max(self._served, version)
            self._scraped.notify_all()

        labels = list(COMMON_LABELS)
        info = InfoMetricFamily("pitdist_run", "a pitdist run's mesh and batch", labels=labels)
        info.add_metric(self.labels, self.info)
        yield info

        def one(family, name, doc, value):
            metric = family(name, doc, labels=labels)
            metric.add_metric(self.labels, value)
            return metric

        yield one(CounterMetricFamily, "pitdist_steps_total", "training steps this process finished", totals["steps"])
        yield one(
            CounterMetricFamily, "pitdist_step_seconds_total", "wall time of the finished steps", totals["step_seconds"]
        )
        yield one(
            CounterMetricFamily,
            "pitdist_data_wait_seconds_total",
            "time spent getting batches (within steps)",
            totals["data_wait_seconds"],
        )
        yield one(
            CounterMetricFamily, "pitdist_images_total", "images of this rank's DP group trained on", totals["images"]
        )
        yield one(CounterMetricFamily, "pitdist_tokens_total", "tokens this rank trained on", totals["tokens"])
        yield one(
            GaugeMetricFamily,
            "pitdist_replicated_pe_grad_fraction",
            "share of the engine's gradient elements that are a replicated learned PE table",
            self.pe_fraction,
        )
        docs = {
            "step": "last finished step (1-based)",
            "loss": "global mean training loss of the last step",
            "step_seconds": "wall time of the last step",
            "data_wait_seconds": "batch wait of the last step",
            "images_per_second": "job images/s from the last step's time",
            "tokens_per_second": "job tokens/s from the last step's time",
            "achieved_flops": "training FLOP/s per device (pitdist.observe.flops)",
            "mfu": "achieved FLOP/s over the device's peak (metrics.peak_tflops)",
        }
        for key, value in last.items():
            if key in docs:
                yield one(GaugeMetricFamily, f"pitdist_{key}", docs[key], value)
        memory = GaugeMetricFamily("pitdist_memory_bytes", "this process's memory", labels=[*labels, "kind"])
        for kind in ("rss", "rss_peak", "cuda_allocated", "cuda_max_allocated"):
            if kind in last:
                memory.add_metric([*self.labels, kind], last[kind])
        yield memory

        names = [*labels, *COMM_LABELS]
        families = [
            CounterMetricFamily("pitdist_comm_calls_total", "collectives issued (ledger)", labels=names),
            CounterMetricFamily(
                "pitdist_comm_handed_bytes_total", "bytes handed to collectives (ledger)", labels=names
            ),
            CounterMetricFamily(
                "pitdist_comm_sent_bytes_total",
                "bytes that left this rank (ledger; algorithms in pitdist.observe.ledger)",
                labels=names,
            ),
            CounterMetricFamily("pitdist_comm_seconds_total", "seconds inside collectives (ledger)", labels=names),
        ]
        for (phase, category, op), values in sorted(comm.items()):
            for family, value in zip(families, values):
                family.add_metric([*self.labels, category, phase, op], value)
        yield from families

    # --- publishing (training thread) ----------------------------------------------------------
    def publish(self) -> None:
        """Copy the ledger's running totals and this process's memory into a new snapshot."""
        comm = {key: (t.count, t.handed, t.sent, t.seconds) for key, t in self.ledger.cumulative.items()}
        last = dict(self._last)
        try:
            import psutil

            last["rss"] = psutil.Process().memory_info().rss
        except ImportError:
            pass
        last["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
            1 if sys.platform == "darwin" else 1024
        )
        if self.device.type == "cuda":
            last["cuda_allocated"] = torch.cuda.memory_allocated(self.device)
            last["cuda_max_allocated"] = torch.cuda.max_memory_allocated(self.device)
        self._version += 1
        self._snapshot = (self._version, dict(self._totals), last, comm)

    def on_step(self, step: int, loss: float, step_seconds: float, data_wait_seconds: float) -> None:
        """After step ``step`` (0-based) finished: loss is the global mean, times are this rank's."""
        t = self._totals
        t["steps"] += 1
        t["step_seconds"] += step_seconds
        t["data_wait_seconds"] += data_wait_seconds
        t["images"] += self.group_images
        t["tokens"] += self.rank_tokens
        images_per_s = self.job_images / step_seconds
        achieved = images_per_s * self.image_flops / self.world
        self._last = {
            "step": step + 1,
            "loss": loss,
            "step_seconds": step_seconds,
            "data_wait_seconds": data_wait_seconds,
            "images_per_second": images_per_s,
            "tokens_per_second": images_per_s * self.tokens_per_image,
            "achieved_flops": achieved,
        }
        if self.peak:
            self._last["mfu"] = achieved / self.peak
        self.publish()

    def _wait_for_scrape(self, when: str) -> bool:
        """Wait (at most metrics.prometheus_linger_s) until a scrape has returned the latest snapshot."""
        version, linger = self._version, self.cfg.metrics.prometheus_linger_s
        with self._scraped:
            scraped = self._scraped.wait_for(lambda: self._served >= version, timeout=linger)
        if linger and not scraped:
            print(
                f"pitdist: rank {self.rank}: no scrape of {self.target} within metrics.prometheus_linger_s = "
                f"{linger:g} s {when}",
                file=sys.stderr,
                flush=True,
            )
        return scraped

    def await_first_scrape(self) -> None:
        """Before the first step, so that Prometheus holds every counter's starting value."""
        self._wait_for_scrape(
            "before the first step; training anyway (is Prometheus scraping this target"
            + (f" or watching {self.sd_file.parent}?)" if self.sd_file else "?)")
        )

    def close(self, wait: bool = True) -> None:
        """Publish the final values, wait (bounded) until a scrape has them, stop serving, withdraw the
        target. ``wait=False`` (a failed rank): withdraw at once."""
        self.publish()
        if wait and self._served >= 0:  # a rank nobody scraped so far is not waited for
            self._wait_for_scrape("after the last step; Prometheus missed this rank's final values")
        self._server.shutdown()
        self._server.server_close()
        if self.sd_file is not None:
            self.sd_file.unlink(missing_ok=True)


def metrics_exporter(
    cfg: JobConfig,
    mesh,
    run: str,
    ledger,
    pe_fraction: float,
    *,
    tokens_per_image: int,
    image_flops: float,
    device: torch.device,
) -> PrometheusExporter | NoExporter:
    """The rank's exporter when metrics.prometheus_port is set, else one that does nothing."""
    if not cfg.metrics.prometheus_port:
        return NoExporter()
    exporter = PrometheusExporter(
        cfg, mesh, run, ledger, pe_fraction, tokens_per_image=tokens_per_image, image_flops=image_flops, device=device
    )
    if mesh.rank == 0:
        last = cfg.metrics.prometheus_port + mesh.world_size - 1
        where = f"ports {cfg.metrics.prometheus_port}-{last}" if mesh.world_size > 1 else f"port {exporter.port}"
        print(
            f"pitdist: Prometheus metrics of run {run} at {cfg.metrics.prometheus_host}, {where} (rank r at "
            f"metrics.prometheus_port + r)" + (f"; targets in {exporter.sd_file.parent}" if exporter.sd_file else ""),
            flush=True,
        )
    exporter.await_first_scrape()
    return exporter
