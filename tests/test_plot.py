"""rayrl.plot: the timeline and PNG of a synthetic run with a failure and a resume, and of a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from matplotlib.image import imread

from rayrl.plot import main, plot_run, timeline
from rayrl.runlog import read_jsonl
from tests.support import RESUME_STEPS, run_dir, uninterrupted_run

T0 = 1_000_000.0


def _write(run: Path, metrics: list[dict], events: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _step(step: int, end: float) -> dict:
    return {"step": step, "reward_mean": 0.1 * step, "time_s": 1.0, "time": T0 + end}


@pytest.fixture
def failed_run(tmp_path) -> Path:
    """Steps 1-4 (saves after 2 and 4), a failure during step 7, a resume from step 4 at T0+12, steps 5-8
    again (the first attempt's 5 and 6 were dropped from metrics.jsonl)."""
    events = [
        {"time": T0, "event": "fresh_start"},
        {"time": T0 + 2.2, "event": "save", "step": 2, "blocking_s": 0.2},
        {"time": T0 + 4.4, "event": "save", "step": 4, "blocking_s": 0.2},
        {"time": T0 + 6.6, "event": "save", "step": 6, "blocking_s": 0.2},  # of the lost attempt
        {"time": T0 + 7.5, "event": "failure", "what": "actor[1]", "replaced_by": {"actor": "standby"}},
        {"time": T0 + 12.0, "event": "resumed", "step": 4, "source": "memory"},
        {"time": T0 + 13.5, "event": "recovered", "step": 5, "resumed_from": 4, "seconds_to_next_step": 6.0},
        {"time": T0 + 14.7, "event": "save", "step": 6, "blocking_s": 0.2},
    ]
    ends = [1.0, 2.0, 3.2, 4.2, 13.5, 14.5, 15.7, 16.7]
    run = tmp_path / "run"
    _write(run, [_step(s, end) for s, end in zip(range(1, 9), ends)], events)
    return run


def test_timeline_marks(failed_run):
    tl = timeline(read_jsonl(failed_run / "metrics.jsonl"), read_jsonl(failed_run / "events.jsonl"))
    assert tl.steps == list(range(1, 9))
    assert tl.ends == pytest.approx([1.0, 2.0, 3.2, 4.2, 13.5, 14.5, 15.7, 16.7])  # since fresh_start
    assert [s for s, _ in tl.saves] == [2, 4, 6, 6]
    assert tl.failures == [(pytest.approx(7.5), "actor[1] -> standby")]
    assert tl.resumes == [(4, pytest.approx(12.0))] and tl.memory_resumes == [pytest.approx(12.0)]
    assert tl.recoveries == [pytest.approx(13.5)]


def test_plot_writes_a_png(failed_run, tmp_path):
    out = tmp_path / "life.png"
    assert main([str(failed_run), "--out", str(out)]) == 0
    height, width, _ = imread(out).shape
    assert width > 1000 and height > 600
    assert plot_run(failed_run) == failed_run / "run.png"  # the default place
    assert (failed_run / "run.png").stat().st_size > 20_000


@pytest.mark.parametrize("metrics, message", [
    ([], "no finished steps"),
    ([{"step": 1, "reward_mean": 0.0, "time_s": 1.0}], "without a wall time"),
])
def test_unplottable_runs_exit_2(tmp_path, capsys, metrics, message):
    _write(tmp_path / "run", metrics, [{"time": T0, "event": "fresh_start"}])
    assert main([str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_plot_of_a_real_run(tmp_path_factory, tmp_path):
    run = run_dir(uninterrupted_run(tmp_path_factory, *RESUME_STEPS))  # 6 steps, a save every 2
    tl = timeline(read_jsonl(run / "metrics.jsonl"), read_jsonl(run / "events.jsonl"))
    assert tl.steps == list(range(1, 7))
    assert [s for s, _ in tl.saves] == [2, 4, 6]
    assert all(b > a for a, b in zip(tl.ends, tl.ends[1:]))
    for step, t in tl.saves:  # a step's save comes after the step ends, before the next one does
        i = tl.steps.index(step)
        assert tl.ends[i] <= t + 1e-6 and (i + 1 == len(tl.ends) or t < tl.ends[i + 1])
    assert imread(plot_run(run, tmp_path / "run.png")).shape[0] > 600


def test_plot_without_matplotlib_says_which_pip_install(failed_run, tmp_path):
    """As after a set-up without the plot extra: exit 2, one line naming the pip install, no traceback."""
    import subprocess
    import sys

    from tests.support import REPO, env_for_tests

    code = ("import sys; sys.modules['matplotlib'] = None; from rayrl.plot import main; "
            f"sys.exit(main([{str(failed_run)!r}, '--out', {str(tmp_path / 'x.png')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env_for_tests(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rayrl.plot: needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')"]
