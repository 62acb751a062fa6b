"""Test-only hang injection, loaded by every process of a run whose PYTHONPATH starts with this directory
(``tests.support.hang_env``); rayrl's code is not touched.

With RAYRL_TEST_HANG_AT_STEP=N[,M...], a rollout worker hangs forever at the start of step N (and M...),
once per run directory: the first worker to get there creates ``<run dir>/.test-hang-<N>`` and parks; a test
waits for that marker to kill a run at a known step, or lets runner.step_timeout_s catch the hang. The hang
is put around ``RolloutWorker.generate`` right after ``rayrl.workers.rollout`` is imported.
"""

import functools
import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path

TARGET = "rayrl.workers.rollout"


def _hang_in(steps, generate):
    @functools.wraps(generate)
    def hanging_generate(self, items, n, step, *args):
        if str(step) in steps:
            try:
                (Path(self.cfg.runner.log_path) / f".test-hang-{step}").open("x").close()
            except FileExistsError:
                pass
            else:
                while True:
                    time.sleep(3600)
        return generate(self, items, n, step, *args)

    return hanging_generate


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, steps):
        self.steps = steps

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)  # find the real module; patch it once
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            module.RolloutWorker.generate = _hang_in(self.steps, module.RolloutWorker.generate)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("RAYRL_TEST_HANG_AT_STEP"):
    sys.meta_path.insert(0, _PatchAfterImport(set(os.environ["RAYRL_TEST_HANG_AT_STEP"].split(","))))
