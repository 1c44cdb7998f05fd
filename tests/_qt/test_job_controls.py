"""The shared Run/Stop/progress component: guard, ETA without the preparation, end states."""

from __future__ import annotations

import dataclasses
import threading

import cellrefine._qt.job_controls as job_controls
from cellrefine._qt.job_controls import JobControls, eta_text
from cellrefine._qt.workers import JobSet


@dataclasses.dataclass
class Update:
    done: int
    total: int
    phase: str = "training"
    message: str = ""


def test_eta_counts_only_the_training_steps(qtbot, monkeypatch):
    controls = JobControls(JobSet(), unit="step")
    qtbot.addWidget(controls)
    clock = {"now": 0.0}
    monkeypatch.setattr(job_controls.time, "perf_counter", lambda: clock["now"])
    controls.show_progress(Update(0, 100, "preparing", "Preparing 4 planes…"))
    assert controls.progress.maximum() == 0 and controls.progress.format() == "Preparing 4 planes…"
    clock["now"] = 90.0  # a long preparation: it must not count into the rate
    controls.show_progress(Update(1, 100))
    clock["now"] = 100.0  # then 1 s per step
    controls.show_progress(Update(11, 100))
    assert controls.progress.format() == "step 11/100  ETA 1 min 29 s"
    controls.show_progress(Update(25, 100, "scoring", "scoring the checkpoint…"))
    assert controls.progress.format() == "step 25/100  scoring the checkpoint…"


def test_eta_text():
    assert eta_text(0, 10, 5.0) == "" and eta_text(10, 10, 5.0) == ""
    assert eta_text(2, 10, 4.0) == "ETA 16 s"


def _job(stop, steps=10_000):
    for step in range(1, steps + 1):
        if stop is not None and stop.is_set():
            return "stopped"
        yield Update(step, steps)
        threading.Event().wait(0.002)
    return "done"


def test_guard_stop_event_and_end_states(qtbot, errors):
    jobs = JobSet()
    controls = JobControls(jobs, unit="step")
    qtbot.addWidget(controls)
    stop = threading.Event()
    returned = []
    worker = controls.launch("Training", lambda: jobs.start(_job, stop, stop_event=stop, on_returned=returned.append), stop_event=stop)
    assert worker is not None and not controls.run_button.isEnabled() and controls.stop_button.isEnabled()
    assert controls.launch("Training", lambda: jobs.start(_job, None)) is None  # already running
    assert "Training is already running" in errors["warning"][-1]
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        qtbot.waitUntil(lambda: controls.progress.value() > 2, timeout=10_000)
        controls.stop()
    assert returned == ["stopped"]  # Stop set the event: the job returned its result
    assert controls.progress.format() == "stopped early" and controls.run_button.isEnabled()

    def broken():
        raise ValueError("no image layer")

    assert controls.launch("Training", broken) is None
    assert errors["error"][-1] == "no image layer"

    worker = controls.launch("Cancelling", lambda: jobs.start(_job, None))  # no stop event: Stop quits the worker
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        qtbot.waitUntil(lambda: controls.progress.value() > 2, timeout=10_000)
        controls.stop()
    assert controls.progress.format() == "cancelled"


def test_closed_jobset_stops_and_silences_its_jobs(qtbot):
    jobs = JobSet()
    stop = threading.Event()
    seen = []
    worker = jobs.start(_job, stop, stop_event=stop, on_yielded=seen.append)
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        qtbot.waitUntil(lambda: len(seen) > 2, timeout=10_000)
        jobs.close()
        count = len(seen)
    assert stop.is_set() and jobs.closed and len(jobs) == 0
    assert len(seen) == count  # no handler ran after close
