"""The run's own records: metrics.jsonl (one object per finished step) and events.jsonl (failures,
recoveries, saves). TensorBoard and W&B are rayrl.trackers."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from rayrl.checkpoint.safe_io import atomic_write_text

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a crash mid-write) is skipped."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out


class JsonlFollower:
    """New complete lines of a file that grows by appends (and may be rewritten shorter on resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_records(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, 2)
                if f.tell() < self.offset:  # rewritten on resume: follow from its new end
                    self.offset = f.tell()
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        out = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


class MetricsLog:
    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (written before a crash), so each step appears once."""
        records = read_jsonl(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records) or (self.path.exists() and kept != records):
            atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
            log.info("metrics.jsonl: dropped %d record(s) after step %d", len(records) - len(kept), step)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Record a finished step, stamped with the wall time it finished at; returns the record written."""
        record = {**record, "time": time.time()}
        _append_line(self.path, record)
        return record


class EventLog:
    """One JSON line per failure, recovery, save or resume, with the console line to show for it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / EVENTS_FILE

    def emit(self, event: str, message: str, **fields: Any) -> None:
        """Record an event; the driver prints ``message`` (rayrl.console), so it is not logged here too."""
        _append_line(self.path, {"time": time.time(), "event": event, "message": message, **fields})


class EventLogHandler(logging.Handler):
    """Sends the coordinator's log records (saves, retention, a custom manager's lines) to events.jsonl as
    ``log`` events, so the driver prints all of them, the last ones of a run included."""

    def __init__(self, events: EventLog, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                message = f"{record.levelname}: {message}"
            self.events.emit("log", message, level=record.levelname, logger=record.name)
        except Exception:  # a log line must never break the run
            self.handleError(record)
