"""Errors during recovery are handled like errors anywhere (one recovery method with its own handling), in
one real run whose checkpoint manager (tests/incident_manager.py) kills workers at known moments:

1. the reference worker dies after step 2's save; while recovery reloads the kept actor group, actor rank 0
   dies too: one incident, one unit of the restart budget (max_restarts=2), both groups replaced;
2. the reference worker dies after step 4's save and the recovery's ``prepare`` raises: a program error
   (exit 3) with its ``program_error`` event, not a crash past the teardown.
"""

from __future__ import annotations

import pytest

from tests.support import WITH_REFERENCE, events_named, rayrl_stderr_lines, run_rayrl_split

pytestmark = pytest.mark.slow

MANAGER = "runner.checkpoint.manager_class=tests.incident_manager.IncidentManager"


def test_a_failure_while_recovering_is_the_same_incident_and_an_error_in_recovery_is_reported(tmp_path):
    proc = run_rayrl_split(tmp_path, MANAGER, WITH_REFERENCE, "runner.max_steps=6", "runner.save_interval=2",
                           "runner.max_restarts=2", "runner.checkpoint.async_save=false")
    assert proc.returncode == 3, (proc.stdout + proc.stderr)[-4000:]
    failures = events_named(tmp_path, "failure")
    assert [(f["what"].split("[")[0], f["counted"], f["restarts"]) for f in failures] == [
        ("reference", True, 1), ("actor", False, 1), ("reference", True, 2)], failures
    assert failures[1]["same_incident"] is True and failures[1]["replaced"] == ["actor", "reference"], failures[1]
    (recovered,) = events_named(tmp_path, "recovered")
    assert recovered["replaced"] == ["actor", "reference"] and recovered["resumed_from"] == 2, recovered
    (error,) = events_named(tmp_path, "program_error")
    assert "prepare failed while recovering" in error["message"], error
    (line,) = rayrl_stderr_lines(proc.stderr)
    assert "RuntimeError: prepare failed while recovering" in line, line
