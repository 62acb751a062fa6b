"""runner.loggers: where a run's step metrics go besides metrics.jsonl (always written) and the console.

``tensorboard`` writes scalars under ``<run dir>/tensorboard``; ``wandb`` logs to a Weights & Biases run whose
id is kept in ``<run dir>/wandb_run_id``, so that a resume or a recovery continues the same run (its curves go
on instead of starting over) and a fresh start begins a new one. null = console plus what is installed (W&B
only when configured: an API key, ``wandb login`` or WANDB_MODE, since it cannot ask for one here).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path
from typing import Any

PIP = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}
WANDB_RUN_ID_FILE = "wandb_run_id"
# The W&B settings the coordinator's process needs from the driver's environment (the API key is not one of
# them: it comes from the nodes' environment or `wandb login`, never through Ray).
WANDB_ENV = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_DIR")


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _wandb_configured() -> bool:
    netrc = Path.home() / ".netrc"
    return bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace"))


def missing_logger(requested: list[str] | None) -> str | None:
    """The config error for a logger asked for by name that is not installed, or None."""
    for i, name in enumerate(requested or []):
        if name in PIP and not _installed(name):
            return f"runner.loggers[{i}]: {name} is not installed: {PIP[name]} (or pip install -e '.[{name}]')"
    return None


def resolve(requested: list[str] | None) -> tuple[list[str], str]:
    """The loggers in force and the line that says so at the start of a run."""
    if requested is not None:
        names = list(dict.fromkeys(["console", *requested]))
        return names, f"loggers: {', '.join(names)} (runner.loggers)"
    names, off = ["console"], []
    for name, usable, why in (("tensorboard", _installed("tensorboard"), "not installed"),
                              ("wandb", _installed("wandb") and _wandb_configured(),
                               "not configured" if _installed("wandb") else "not installed")):
        (names.append(name) if usable else off.append(f"{name} {why}"))
    said = f"loggers: {', '.join(names)} (runner.loggers=null: console plus what is installed"
    return names, said + (f"; {', '.join(off)})" if off else ")")


class Trackers:
    """The tensorboard and wandb loggers of one coordinator process, opened once the resume step is known."""

    def __init__(self, run_dir: Path, names: list[str], experiment: str, config: dict[str, Any]) -> None:
        self.run_dir, self.names, self.experiment, self.config = run_dir, names, experiment, config
        self._tb: Any = None
        self._wandb: Any = None

    def open(self, resumed_step: int | None) -> None:
        """Start logging after ``resumed_step`` (None: a fresh start). After an in-job recovery the W&B run
        goes on as it is; TensorBoard's writer is opened again, dropping the steps about to be redone."""
        if "tensorboard" in self.names:
            from torch.utils.tensorboard import SummaryWriter

            if self._tb is not None:
                self._tb.close()

            # purge_step: steps after the checkpoint (all of them on a fresh start), logged before a crash,
            # are dropped from the curves
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=(resumed_step or 0) + 1)
        if "wandb" in self.names and self._wandb is None:
            import wandb

            id_file = self.run_dir / WANDB_RUN_ID_FILE
            if resumed_step is None or not id_file.exists():
                id_file.write_text(uuid.uuid4().hex[:16] + "\n")
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "rayrl"), name=self.experiment,
                                     id=id_file.read_text().strip(), resume="allow", dir=str(self.run_dir),
                                     config=self.config, settings=wandb.Settings(silent=True, console="off"))

    def log(self, record: dict[str, Any]) -> None:
        scalars = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")}
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, record["step"])
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
