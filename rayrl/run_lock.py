"""One writer per run directory: the coordinator holds an exclusive ``flock`` on ``<run dir>/.rayrl.lock``
while its ``run`` goes on (and drops it when that returns, or when its process dies).

Two jobs started on the same ``output_dir/experiment_name`` would otherwise both write ``checkpoints/``:
one's retention deleting the other's steps, the tracker naming a step the other replaced. The kernel drops
the lock when the holder's process dies however it dies, so a crashed run never leaves a stale lock. A
coordinator that replaces a dead one (Ray's restart, run_main.sh's relaunch) waits longer for the previous
process to finish dying; a lock still held after the wait is a usage error (exit 2 naming the holder).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from rayrl.config import ConfigError

LOCK_FILE = ".rayrl.lock"
POLL_S = 0.2


class RunLock:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the lock, retrying for up to ``wait_s``; raises ConfigError naming the holder if another
        process keeps it. False where the filesystem has no flock (the run goes on unguarded)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ConfigError(
                        f"runner.output_dir: the run directory {self.path.parent} is in use by another rayrl "
                        f"run ({self.holder()}); wait for it to end, or choose another runner.output_dir or "
                        f"runner.experiment_name") from None
                time.sleep(POLL_S)
            except OSError:  # e.g. ENOLCK / EOPNOTSUPP on some network filesystems
                os.close(fd)
                return False
        self._fd = fd
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        return True

    def holder(self) -> str:
        """Who holds the lock, as its holder recorded it (best effort: for the error message)."""
        try:
            info = json.loads(self.path.read_text())
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
            return f"pid {info['pid']} on host {info['host']}, since {since}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
