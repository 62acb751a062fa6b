"""Entry point: ``python -m benchmarks.run [--quick] [--only NAME ...] [--state-gb G] [--json FILE]``.

Runs the benchmarks in order, prints one JSON line per figure as it comes, then a table with the machine,
the date and the load average (the machine is shared: a high load means noisy numbers). Exits 1 if a
benchmark failed (the others still run and print).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import Figure, Settings

MODULES = ("io_throughput", "async_blocking", "overhead", "recovery", "resume_cost", "reward_scoring", "placement",
           "elastic", "async_rollout", "weight_sync")


def _load_benchmarks() -> dict:
    modules = [importlib.import_module(f"benchmarks.{m}") for m in MODULES]
    return {m.NAME: m for m in modules}


def main(argv: list[str] | None = None) -> int:
    benchmarks = _load_benchmarks()
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke test, not a figure")
    p.add_argument("--only", action="append", choices=sorted(benchmarks), help="run only this one (repeatable)")
    p.add_argument("--state-gb", type=float, help="actor state size (weights + AdamW) in GB; default 1.0")
    p.add_argument("--work-dir", type=Path, help="scratch directory on the disk to measure (default: a temp dir)")
    p.add_argument("--json", type=Path, help="also append the JSON lines to this file")
    args = p.parse_args(argv)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="rayrl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = Settings.make(args.quick, work.resolve(), args.state_gb)
    print(f"# {_machine()}", flush=True)
    figures: list[Figure] = []
    failed: list[str] = []
    try:
        for name in [n for n in benchmarks if not args.only or n in args.only]:
            t0 = time.perf_counter()
            try:
                new = benchmarks[name].run(settings)
            except Exception as err:  # one benchmark failing must not hide the others' numbers
                failed.append(name)
                traceback.print_exc()
                _emit(json.dumps({"figure": name, "error": f"{type(err).__name__}: {err}"[:2000]}), args.json)
                continue
            for fig in new:
                _emit(fig.json_line(), args.json)
            print(f"# {name} took {time.perf_counter() - t0:.0f}s", flush=True)
            figures += new
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(format_table(figures))
    print(f"# load average at the end: {_load()}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _emit(line: str, path: Path | None) -> None:
    print(line, flush=True)
    if path is not None:
        with open(path, "a") as f:
            f.write(line + "\n")


def format_table(figures: list[Figure]) -> str:
    """A plain-text (Markdown) table: value and reference with units, the ratio, the target and verdict."""
    rows = [("figure", "rayrl", "reference", "ratio", "target", "met", "spread (rayrl)")]
    for f in figures:
        verdict = "" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f"{f.question}.{f.name}", f"{f.value:.3g} {f.unit}",
                     f"{f.reference_name} {f.reference:.3g} {f.unit}", f"{f.ratio:.3f}", f.target, verdict,
                     f.spread))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _machine() -> str:
    import ray
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {platform.node()}: {os.cpu_count()} x {cpu}, "
            f"{mem_gb:.0f} GiB RAM; torch {torch.__version__}, ray {ray.__version__}, "
            f"python {platform.python_version()}; load average {_load()}")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
