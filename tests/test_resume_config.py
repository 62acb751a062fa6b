"""The config of the resumed run is the one in force: a run resumed with a larger ``runner.max_steps`` follows
the LR schedule the new config defines (not the one pickled into the checkpoint), and the keys that differ
from the checkpoint's config are listed in one warning (event ``config_changed``)."""

from __future__ import annotations

from tests.support import events_named, read_metrics, run_rayrl, uninterrupted_run

COSINE = ("actor.optim.lr_schedule=cosine", "runner.save_interval=4")


def test_resume_with_more_steps_follows_the_new_schedule_and_lists_the_changed_keys(tmp_path_factory, tmp_path):
    reference = uninterrupted_run(tmp_path_factory, "runner.max_steps=8", *COSINE)
    first = run_rayrl(tmp_path, "runner.max_steps=4", *COSINE)
    assert first.returncode == 0, first.stdout[-3000:]
    second = run_rayrl(tmp_path, "runner.max_steps=8", *COSINE)
    assert second.returncode == 0, second.stdout[-3000:]
    want = {m["step"]: m["lr"] for m in read_metrics(reference)}
    got = {m["step"]: m["lr"] for m in read_metrics(tmp_path)}
    assert [got[s] for s in range(5, 9)] == [want[s] for s in range(5, 9)], (got, want)
    assert want[8] > 3e-3 * 0.1  # the uninterrupted run has not reached the floor (min_lr_ratio) by step 8
    (changed,) = events_named(tmp_path, "config_changed")
    assert changed["changed"] == {"runner.max_steps": [4, 8]}, changed
    assert changed["step"] == 4
    assert "runner.max_steps: 4 -> 8" in second.stdout
