"""The step timer: the one owner of per-step time (pitdist.observe.timer)."""

import json
import time

import pytest

from pitdist.observe.categories import Phase
from pitdist.observe.ledger import CommLedger
from pitdist.observe.timer import StepTimer, read_timing


def test_a_step_is_timed_whole_and_by_phase_and_the_phases_fit_inside_it():
    timer = StepTimer()
    with timer.step(3):
        with timer.phase(Phase.DATA):
            time.sleep(0.02)
        with timer.phase(Phase.FORWARD):
            time.sleep(0.03)
        with timer.phase(Phase.FORWARD):  # a phase entered twice adds up
            time.sleep(0.01)
    step = timer.last
    assert step.step == 3
    # sleep() guarantees lower bounds only: no upper bound is asserted (the machine may be loaded).
    assert step.data_s >= 0.02 and step[Phase.FORWARD] >= 0.04
    assert step[Phase.BACKWARD] == 0.0
    assert step.data_s + step[Phase.FORWARD] <= step.total_s


def test_the_ledger_follows_the_timers_steps_and_phases():
    ledger = CommLedger()
    timer = StepTimer(ledger)
    with timer.step(7):
        assert ledger.step == 7
        with timer.phase(Phase.BACKWARD):
            assert ledger.phase == Phase.BACKWARD
        assert ledger.phase == Phase.INIT
    timer.outside_steps()
    assert ledger.step is None


def test_wall_time_runs_from_the_first_step_to_the_last(tmp_path):
    timer = StepTimer()
    for step in range(2):
        with timer.step(step):
            time.sleep(0.01)
        time.sleep(0.02)  # between steps (logging): inside the wall time, outside every step
    assert timer.wall_s >= sum(s.total_s for s in timer.steps) + 0.02  # the gap after step 0 is inside
    path = timer.write(tmp_path, rank=1)
    assert path == tmp_path / "timing" / "rank1.json"
    (record,) = read_timing(tmp_path)
    assert record["rank"] == 1 and record["wall_s"] == timer.wall_s
    assert [s["step"] for s in record["steps"]] == [0, 1]
    assert record["steps"][0]["total_s"] == timer.steps[0].total_s
    assert json.loads(path.read_text()) == record


def test_a_run_directory_without_timing_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no timing/rank"):
        read_timing(tmp_path)
