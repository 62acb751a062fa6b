"""A run's life as one PNG: ``python -m rayrl.plot <run dir> [--out file.png]``.

Reward (and each named reward function's mean, ``reward/<name>``) and step time over steps and over wall time, from the run's metrics.jsonl (one record per step, with
the wall time it finished; steps redone after a recovery replace the lost ones) and events.jsonl, with saves,
failures, recoveries and resumes marked.
"""

from __future__ import annotations

import argparse
import bisect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayrl.runlog import EVENTS_FILE, METRICS_FILE, read_jsonl

Record = dict[str, Any]
FAILURES = ("failure", "coordinator_restarted", "driver_relaunched", "preempted", "run_failed", "program_error")


@dataclass
class Timeline:
    """Steps with the wall time each ended (seconds since the run's first record), and the marks."""

    steps: list[int]
    ends: list[float]
    rewards: list[float]
    named: dict[str, list[float]]  # reward/<name> -> per-step mean (nan where a step lacks it)
    step_times: list[float]
    saves: list[tuple[int, float]]  # (step, time)
    failures: list[tuple[float, str]]  # (time, what failed)
    resumes: list[tuple[int, float]]  # (step resumed from, time): in-job recoveries and restarts alike
    recoveries: list[float]  # times the first step after a failure finished
    memory_resumes: list[float]  # times of the resumes that loaded a checkpoint's copy in memory


def timeline(metrics: list[Record], events: list[Record]) -> Timeline:
    untimed = [r.get("step") for r in metrics if "time" not in r]
    if untimed:
        raise ValueError(f"metrics.jsonl records without a wall time (step {untimed[0]}): written by an older rayrl")
    ends = [float(r["time"]) for r in metrics]
    timed = [e for e in events if "time" in e]
    t0 = min([e["time"] for e in timed] + [ends[0] - float(metrics[0].get("time_s", 0.0))])  # the run's start

    def marks(*names: str) -> list[Record]:
        return [e for e in timed if e.get("event") in names]

    return Timeline(
        steps=[int(r["step"]) for r in metrics], ends=[t - t0 for t in ends],
        rewards=[float(r.get("reward_mean", float("nan"))) for r in metrics],
        named={k: [float(r.get(k, float("nan"))) for r in metrics]
               for k in dict.fromkeys(k for r in metrics for k in r if k.startswith("reward/") and k.count("/") == 1)},
        step_times=[float(r.get("time_s", float("nan"))) for r in metrics],
        saves=[(int(e["step"]), e["time"] - t0) for e in marks("save") if "step" in e],
        failures=[(e["time"] - t0, str(e.get("what") or e["event"]) + _by_standby(e)) for e in marks(*FAILURES)],
        resumes=[(int(e.get("step", 0)), e["time"] - t0) for e in marks("resumed")],
        recoveries=[e["time"] - t0 for e in marks("recovered")],
        memory_resumes=[e["time"] - t0 for e in marks("resumed") if e.get("source") == "memory"],
    )


def _by_standby(failure: Record) -> str:
    """How a failure's label says that standbys took the lost places (runner.standby)."""
    return " -> standby" if "standby" in (failure.get("replaced_by") or {}).values() else ""


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run in ``run_dir`` into a PNG (default ``<run dir>/run.png``); returns its path.
    ModuleNotFoundError when matplotlib (the plot extra) is not installed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    metrics, events = read_jsonl(run_dir / METRICS_FILE), read_jsonl(run_dir / EVENTS_FILE)
    if not metrics:
        raise ValueError(f"{run_dir / METRICS_FILE}: no finished steps to plot")
    tl = timeline(metrics, events)
    minutes = (tl.ends[-1] if tl.ends else 0) > 600
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5), sharex="col")
    for row, (values, label) in enumerate(((tl.rewards, "reward (mean)"), (tl.step_times, "step time (s)"))):
        by_step, by_time = axes[row]
        by_step.plot(tl.steps, values, ".-", color="tab:blue", lw=1, ms=3)
        by_time.plot([t / scale for t in tl.ends], values, ".", color="tab:blue", ms=3)
        _connect_segments(by_time, tl, values, scale)
        if row == 0 and len(tl.named) > 1:  # the reward's parts, one line per reward function
            for i, (key, part) in enumerate(tl.named.items()):
                style = {"color": f"C{i + 1}", "lw": 1, "ms": 2, "label": key}
                by_step.plot(tl.steps, part, ".--", **style)
                by_time.plot([t / scale for t in tl.ends], part, ".", **{**style, "label": "_"})
        by_step.set_ylabel(label)
        by_step.xaxis.set_major_locator(MaxNLocator(integer=True))
        _mark_steps(by_step, tl)
        _mark_times(by_time, tl, scale)
    axes[1][0].set_xlabel("step")
    axes[1][1].set_xlabel(f"wall time ({unit}) since the run started")
    axes[0][0].set_title("over steps")
    axes[0][1].set_title("over wall time")
    handles = {h.get_label(): h for ax in axes.flat for h in [*ax.get_lines(), *ax.patches]
               if not h.get_label().startswith("_")}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"{run_dir.name}: {len(tl.steps)} steps, {len(tl.saves)} saves, {len(tl.failures)} failures, "
                 f"{len(tl.recoveries)} recoveries, {len(tl.resumes)} resumes")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = Path(out) if out is not None else run_dir / "run.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _connect_segments(ax, tl: Timeline, values: list[float], scale: float) -> None:
    """Lines between consecutive steps of one stretch only: a failure or restart leaves a gap."""
    cuts = sorted([t for t, _ in tl.failures] + [t for _, t in tl.resumes])
    stretches: dict[int, list[tuple[float, float]]] = {}
    for t, v in zip(tl.ends, values):
        stretches.setdefault(bisect.bisect(cuts, t), []).append((t / scale, v))
    for points in stretches.values():
        ax.plot(*zip(*points), "-", color="tab:blue", lw=1)


def _vlines(ax, xs: list[float], label: str, **style: Any) -> None:
    for i, x in enumerate(xs):
        ax.axvline(x, label=label if i == 0 else "_", **style)


SAVE = {"color": "tab:green", "alpha": 0.3, "lw": 1}
RESUME = {"color": "tab:purple", "ls": ":", "lw": 1.5}


def _mark_steps(ax, tl: Timeline) -> None:
    _vlines(ax, [s for s, _ in tl.saves], "save", **SAVE)
    _vlines(ax, [s for s, _ in tl.resumes], "resumed from checkpoint", **RESUME)


def _mark_times(ax, tl: Timeline, scale: float) -> None:
    _vlines(ax, [t / scale for _, t in tl.saves], "save", **SAVE)
    _vlines(ax, [t / scale for t, _ in tl.failures], "failure", color="tab:red", lw=1.5)
    for t, what in tl.failures:
        ax.annotate(what, (t / scale, 0.98), xycoords=("data", "axes fraction"), rotation=90, va="top",
                    ha="right", fontsize=7, color="tab:red")
    _vlines(ax, [t / scale for _, t in tl.resumes], "resumed from checkpoint", **RESUME)
    _vlines(ax, [t / scale for t in tl.memory_resumes], "(from memory)", color="tab:cyan", ls="--", lw=1.5)
    _vlines(ax, [t / scale for t in tl.recoveries], "recovered (next step done)", color="tab:orange", lw=1.5)
    for i, (t, _) in enumerate(tl.failures):
        back = [r for r in tl.recoveries if r > t]
        if back:
            ax.axvspan(t / scale, back[0] / scale, color="tab:red", alpha=0.08, lw=0,
                       label="no training (failure to next step)" if i == 0 else "_")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rayrl.plot", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run directory (holds metrics.jsonl and events.jsonl)")
    p.add_argument("--out", type=Path, help="PNG to write (default: <run dir>/run.png)")
    args = p.parse_args(argv)
    try:
        out = plot_run(args.run_dir, args.out)
    except ModuleNotFoundError as err:
        print(f"rayrl.plot: needs {err.name}: pip install matplotlib (or pip install -e '.[plot]')", file=sys.stderr)
        return 2
    except (OSError, ValueError) as err:
        print(f"rayrl.plot: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
