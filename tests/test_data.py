"""Reward functions, tasks and the resumable batch stream."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from rayrl.data.ledger import audit, entry
from rayrl.data.loader import BatchStream, make_dataloader
from rayrl.data.rewards import cyclic_match, extract_final_number, math_exact_match
from rayrl.data.tasks import get_task, run_reward_specs


def _data_cfg(**overrides):
    fields = dict(task="copy_pattern", path=None, prompt_key="prompt", answer_key="answer", pattern_length=2,
                  reward_fns=None, reward_fn=None)
    fields.update(overrides)
    return SimpleNamespace(**fields)


def _builtin_reward(cfg):
    """The task's built-in reward, loaded by its dotted path as a run loads it, as (item, text) -> float."""
    (spec,) = run_reward_specs(cfg)
    fn = spec.load()
    return lambda item, text: fn(item, text, [])


# ---- rewards ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42} done", "42"),
        ("\\boxed{\\frac{3}{1}} then \\boxed{-3.50}", "-3.5"),
        ("nested \\boxed{x = {1,234}}", "1234"),
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("#### $5", "5"),
        ("The answer is -3.5.", "-3.5"),
        ("the final answer is: 12,345,678.", "12345678"),
        ("Answer: 7", "7"),
        ("The answer is 4. Check: 4 * 2 = 8", "4"),
        ("I computed 3 then 17.", "17"),
        ("it is 0.50", "0.5"),
        ("+7 apples", "7"),
        ("value 2.0", "2"),
        ("total .5", "0.5"),
        ("no digits here", None),
        ("", None),
        ("\\boxed{x} and later 9", "9"),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("The answer is 72.", "72", 1.0),
        ("\\boxed{72.0}", "Natalia ... #### 72", 1.0),
        ("#### 1,000", "1000", 1.0),
        ("answer is -3.50", "-3.5", 1.0),
        ("answer is 73", "72", 0.0),
        ("I don't know", "72", 0.0),
        ("42", "forty-two", 0.0),
        ("7 then 8", "7", 0.0),
    ],
)
def test_math_exact_match(response, answer, expected):
    assert math_exact_match(response, answer) == expected


def test_cyclic_match():
    assert cyclic_match("ababababab", "ab", 10) == 1.0
    assert cyclic_match("abab", "ab", 8) == 0.5  # too short: the missing characters are wrong
    assert cyclic_match("bababababa", "ab", 10) == 0.0
    assert cyclic_match("abcabx", "abc", 6) == pytest.approx(5 / 6)
    assert cyclic_match("aaaaaaaaaaaaXYZ", "a", 12) == 1.0  # only the first k characters count
    assert cyclic_match("", "a", 3) == 0.0
    with pytest.raises(ValueError):
        cyclic_match("a", "", 3)


# ---- tasks ------------------------------------------------------------------------------------------------


def test_copy_pattern_dataset_is_seeded_and_reward_reads_prompt():
    task = get_task(_data_cfg(pattern_length=3))
    reward = _builtin_reward(_data_cfg(pattern_length=3))
    assert task.name == "copy_pattern"
    data = task.build_dataset(200, seed=5)
    assert data == task.build_dataset(200, seed=5)
    assert data != task.build_dataset(200, seed=6)
    item = data[0]
    pattern = item["prompt"][:-1]
    assert item["prompt"] == pattern + ":" and len(pattern) == 3 and set(pattern) <= set("abcdef")
    assert item["answer"] == (pattern * 4)[:12]
    assert reward(item, item["answer"]) == 1.0
    assert reward(item, item["answer"][:6]) == 0.5
    # prompts differ, so one fixed response cannot score well on all of them
    assert len({d["prompt"] for d in data}) > 50
    assert sum(reward(d, "a" * 12) for d in data) / len(data) < 0.5


def test_repeat_token_task():
    task = get_task(_data_cfg(task="repeat_token"))
    reward = _builtin_reward(_data_cfg(task="repeat_token"))
    data = task.build_dataset(10, seed=0)
    assert all(d["answer"] == "a" * 12 for d in data)
    assert reward(data[0], "a" * 12) == 1.0
    assert reward(data[0], "aaab" * 3) == 0.75


def test_unknown_task_names_key_and_known_tasks():
    with pytest.raises(ValueError, match=r"data.task='nope'.*copy_pattern.*jsonl.*repeat_token"):
        get_task(_data_cfg(task="nope"))
    with pytest.raises(ValueError, match="data.pattern_length"):
        get_task(_data_cfg(pattern_length=0))


def test_jsonl_task(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"question": "1+1?", "solution": "#### 2"}, {"question": "2*3?", "solution": 6}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = get_task(_data_cfg(task="jsonl", path=str(path), prompt_key="question", answer_key="solution"))
    reward = _builtin_reward(_data_cfg(task="jsonl"))
    data = task.build_dataset(num_samples=1, seed=0)
    assert data == [{"question": "1+1?", "solution": "#### 2", "prompt": "1+1?", "answer": "#### 2"},
                    {"question": "2*3?", "solution": 6, "prompt": "2*3?", "answer": "6"}]
    assert reward(data[0], "The answer is 2.") == 1.0
    assert reward(data[1], "\\boxed{5}") == 0.0


def test_file_task_errors(tmp_path):
    with pytest.raises(ValueError, match="data.path must be set"):
        get_task(_data_cfg(task="jsonl"))
    with pytest.raises(ValueError, match="data.path='/no/such.jsonl'"):
        get_task(_data_cfg(task="jsonl", path="/no/such.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "answer": "1"}\n{"prompt": "y"}\n')
    with pytest.raises(ValueError, match="row 2 has no column data.answer_key='answer'"):
        get_task(_data_cfg(task="jsonl", path=str(bad))).build_dataset(0, 0)
    bad.write_text('{"prompt": "x", "answer": "1"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        get_task(_data_cfg(task="jsonl", path=str(bad))).build_dataset(0, 0)


def test_hf_dataset_without_datasets_names_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: find_spec None, import fails
    with pytest.raises(ValueError, match=r"data.path='gsm8k'.*datasets"):
        get_task(_data_cfg(task="hf_dataset", path="gsm8k"))


def test_parquet_without_reader_names_path(tmp_path, monkeypatch):
    for reader in ("pyarrow", "pandas"):
        monkeypatch.setitem(sys.modules, reader, None)
    file = tmp_path / "x.parquet"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match=r"data.path=.*x.parquet.*pyarrow"):
        get_task(_data_cfg(task="parquet", path=str(file)))


# ---- loader -----------------------------------------------------------------------------------------------

DATASET = [{"prompt": f"p{i}", "answer": str(i)} for i in range(10)]  # batch 3 -> 3 batches/epoch, 1 dropped


def _ids(batch):
    return [item["answer"] for item in batch]


def _take(stream, n):
    return [(_ids(b.items), b.epoch) for b in (stream.next() for _ in range(n))]


def test_loader_shuffles_seeded_and_drops_last():
    loader = make_dataloader(DATASET, batch_size=3, seed=0)
    epoch = [_ids(b) for b in loader]
    assert len(epoch) == 3 and all(len(b) == 3 for b in epoch)
    assert isinstance(next(iter(loader))[0], dict)
    assert epoch == [_ids(b) for b in make_dataloader(DATASET, batch_size=3, seed=0)]
    assert epoch != [_ids(b) for b in make_dataloader(DATASET, batch_size=3, seed=1)]
    with pytest.raises(ValueError, match="data.batch_size=11"):
        make_dataloader(DATASET, batch_size=11, seed=0)


def test_stream_counts_epochs_and_reshuffles():
    got = _take(BatchStream(DATASET, 3, seed=0), 7)
    assert [e for _, e in got] == [0, 0, 0, 1, 1, 1, 2]
    assert [ids for ids, _ in got[:3]] != [ids for ids, _ in got[3:6]]
    assert len({i for ids, _ in got[:3] for i in ids}) == 9  # no repeats within an epoch


def test_batches_know_the_dataset_positions_of_their_prompts():
    stream = BatchStream(DATASET, 3, seed=0)
    for _ in range(7):
        batch = stream.next()
        assert batch.items == [DATASET[i] for i in batch.indices]


def _lines(stream, steps):
    return [{"step": s, "ledger": entry(b.epoch, b.indices)} for s, b in
            ((s, stream.next()) for s in range(1, steps + 1))]


def test_ledger_audit_passes_a_stream_and_names_each_kind_of_loss():
    good = _lines(BatchStream(DATASET, 3, seed=0), 7)  # 3 batches per epoch: epochs 0, 1 and one of 2
    assert audit(good, dataset_size=10, batch_size=3) == []
    repeated = good[:2] + [{**good[2], "ledger": good[1]["ledger"]}] + good[3:]
    assert any("already used at step 2" in p for p in audit(repeated, 10, 3))
    skipped = [{**line, "step": i + 1} for i, line in enumerate(good[:2] + good[3:])]  # a batch never trained
    assert audit(skipped, 10, 3) == ["epoch 0 ended after 2 batches, not 3"]
    redone = good[:4] + good[3:]  # step 4 twice, as a resume that redid a step would write
    assert any("not 1..8 once each" in p for p in audit(redone, 10, 3))
    assert audit([{"step": 1}], 10, 3) == ["step 1: no ledger"]


def test_stream_does_not_touch_global_rng():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _take(BatchStream(DATASET, 3, seed=0), 5)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("cut", range(0, 11))
def test_stream_resumes_exactly_at_every_position(tmp_path, cut):
    """Mid-epoch and epoch-boundary cuts (3, 6, 9), through a file loaded with weights_only=True."""
    reference = _take(BatchStream(DATASET, 3, seed=4), 12)
    first = BatchStream(DATASET, 3, seed=4)
    before = _take(first, cut)
    torch.save(first.state_dict(), tmp_path / "data.pt")
    state = torch.load(tmp_path / "data.pt", weights_only=True)
    assert state["consumed_samples"] == 3 * cut
    resumed = BatchStream(DATASET, 3, seed=999)  # the seed lives in the saved sampler state
    resumed.load_state_dict(state)
    assert before + _take(resumed, 12 - cut) == reference


def test_state_saved_right_after_restore_is_the_same_position():
    reference = _take(BatchStream(DATASET, 3, seed=2), 8)
    a = BatchStream(DATASET, 3, seed=2)
    _take(a, 4)
    b = BatchStream(DATASET, 3, seed=2)
    b.load_state_dict(a.state_dict())
    c = BatchStream(DATASET, 3, seed=2)
    c.load_state_dict(b.state_dict())
    assert _take(c, 4) == reference[4:]
    assert c.epoch == 2 and c.consumed_samples == 24


def test_stream_refuses_state_of_another_shape():
    state = BatchStream(DATASET, 3, seed=0).state_dict()
    with pytest.raises(ValueError, match="data.batch_size=3"):
        BatchStream(DATASET, 2, seed=0).load_state_dict(state)
