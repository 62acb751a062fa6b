"""Q5: what does resuming cost at start-up, against starting fresh?

From the timed run life of benchmarks.lifecycle: launch of the driver to its first finished step, once
starting fresh and once resuming (after the whole job was SIGKILLed): the difference is finding and
verifying the checkpoint (checksums), loading every rank and worker, and syncing the weights.
"""

from __future__ import annotations

from benchmarks.common import Figure, Settings, ratio_figure
from benchmarks.lifecycle import run_lifecycle

NAME = "resume"


def run(settings: Settings) -> list[Figure]:
    life = run_lifecycle(settings)
    return [ratio_figure("resume", "first_step_resuming_vs_fresh", [life.resume_first_step_s], "s",
                         "fresh_start", [life.fresh_first_step_s], state_gb=settings.e2e_gb,
                         resumed_step=life.resumed_step)]
