"""The ledger's clocks (pitdist.observe.ledger, "Time"): on a GPU the default path times collectives with
CUDA events read after the fact and never synchronises; the bookkeeping is proved here on real gloo
ranks with a host stand-in for CUDA events (no GPU on this machine)."""

import pytest
import torch
from ledger_workers import event_clock_bookkeeping
from spawn import run_ranks

from pitdist.config import JobConfig
from pitdist.observe.ledger import CommLedger, EventClock, HostClock, SyncClock, clock_for


def test_the_default_clock_on_cuda_is_events_and_sync_only_when_asked():
    assert isinstance(clock_for("cuda", sync=JobConfig().metrics.ledger_sync), EventClock)
    assert isinstance(clock_for("cuda", sync=True), SyncClock)
    for sync in (False, True):  # nothing to synchronise on CPU: host time is the collective's time
        assert type(clock_for("cpu", sync=sync)) is HostClock


def test_a_ledger_without_cuda_times_on_the_host():
    if torch.cuda.is_available():
        pytest.skip("this process sees a CUDA device: the default clock is events there")
    assert type(CommLedger().clock) is HostClock


def test_the_sync_clock_synchronises_at_every_mark(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append(1))
    clock = SyncClock()
    start, end = clock.mark(), clock.mark()
    assert len(calls) == 2 and clock.seconds(start, end) >= 0.0


@pytest.fixture(scope="module")
def bookkeeping():
    return run_ranks(2, event_clock_bookkeeping)


@pytest.mark.slow
def test_bytes_are_recorded_at_call_time_and_seconds_only_once_events_complete(bookkeeping):
    for rank in bookkeeping:
        calls = rank["after_calls"]
        # all_reduce of 256 fp32, isend and irecv of 1024 fp32: exact bytes before any event completed.
        assert calls["bytes"] == {"all_reduce": 1024, "isend": 4096, "irecv": 4096}
        assert all(s == 0.0 for s in calls["seconds"].values())
        assert calls["pending"] == 4  # all_reduce, isend, irecv, and the wait for the exchange
        # The step-end flush does not wait: nothing completed, so nothing resolved and nothing dropped.
        assert rank["after_step"]["pending"] == 4
        assert all(s == 0.0 for s in rank["after_step"]["seconds"].values())
        # Once the device passed the all-reduce's end, a flush resolves it and only it.
        done = rank["after_all_reduce_done"]
        assert done["seconds"]["all_reduce"] > 0.0 and done["pending"] == 3
        assert done["seconds"]["irecv"] == 0.0


@pytest.mark.slow
def test_reading_the_rows_waits_for_every_pending_event(bookkeeping):
    for rank in bookkeeping:
        assert rank["pending_after_rows"] == 0
        rows = {r["op"]: r for r in rank["rows"]}
        assert rows["all_reduce"]["category"] == "pooling" and rows["irecv"]["category"] == "attention_ring"
        assert rows["irecv"]["count"] == 1  # the wait adds time to the receive's record, not a call
        assert all(r["seconds"] >= 0.0 for r in rank["rows"]) and rows["all_reduce"]["seconds"] > 0.0
