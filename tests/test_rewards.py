"""Reward functions by dotted path, scoring (order, seed, timeout, errors), prompts and dataset rows:
the parts that need no Ray job. The end-to-end runs are in tests/test_custom_task.py."""

from __future__ import annotations

import json
import random
import sys
from types import SimpleNamespace

import pytest

from rayrl.data.prompts import render_prompt
from rayrl.data.reward_fns import RewardFnError, load_reward_fn
from rayrl.data.scoring import RewardError, Scorer
from rayrl.data.tasks import get_task, run_reward_specs
from rayrl.main import cli
from rayrl.models.tiny import build_tokenizer

TINY = ["--config", "configs/grpo_tiny.yaml"]


def _data_cfg(**overrides):
    fields = dict(task="copy_pattern", path=None, prompt_key="prompt", answer_key="answer", pattern_length=2,
                  reward_fns=None, reward_fn=None)
    fields.update(overrides)
    return SimpleNamespace(**fields)


def _fns(*entries):
    return [SimpleNamespace(fn=fn, weight=w) for fn, w in entries]


@pytest.mark.parametrize("override, message", [
    ("data.reward_fn=tests.no_such_module:f", "data.reward_fn: cannot import 'tests.no_such_module'"),
    ("data.reward_fn=tests.reward_fns:nope", "data.reward_fn: module 'tests.reward_fns' has no 'nope'"),
    ("data.reward_fn=tests.reward_fns", "data.reward_fn: 'tests.reward_fns' is not a dotted path"),
    ("data.reward_fns=[{fn: tests.reward_fns:constant}, {fn: tests.reward_fns:two_args, weight: 2}]",
     "data.reward_fns[1].fn: tests.reward_fns:two_args cannot be called as fn(item: dict"),
    ("data.reward_fn=tests.reward_fns:NOT_CALLABLE", "data.reward_fn: 'tests.reward_fns:NOT_CALLABLE' is not a function"),
    ("runner.loggers=[console, mlflow]", "runner.loggers[1]: must be one of console, tensorboard, wandb"),
])
def test_bad_reward_path_is_exit_2_naming_the_key(override, message, capsys):
    """Checked by the driver before Ray or any worker starts: exit 2, one line, no traceback."""
    assert cli([*TINY, override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rayrl: config error: ")
    assert message in err[0], err[0]


def test_reward_specs_order_names_and_weights():
    specs = run_reward_specs(_data_cfg(reward_fns=_fns(("tests.reward_fns:constant", 0.5),
                                                       ("tests.reward_fns:constant", 2.0))))
    assert [(s.name, s.weight, s.key) for s in specs] == [
        ("constant", 0.5, "data.reward_fns[0].fn"), ("constant_2", 2.0, "data.reward_fns[1].fn")]
    (default,) = run_reward_specs(_data_cfg())
    assert default.path == "rayrl.data.rewards:copy_pattern_reward"
    with pytest.raises(RewardFnError, match="not both"):
        run_reward_specs(_data_cfg(reward_fn="tests.reward_fns:constant", reward_fns=_fns(("a:b", 1))))


def _scorer(*entries, timeout_s=5.0, seed=1):
    return Scorer(run_reward_specs(_data_cfg(reward_fns=_fns(*entries))), timeout_s, seed)


ITEMS = [{"prompt": "ab:", "answer": "abab"}, {"prompt": [{"role": "user", "content": "hi"}], "answer": "x"}]
TEXTS = ["abab", "a", "xyz", ""]
IDS = [[5, 6, 5, 6], [5], [7, 8, 9], []]


def test_weighted_sum_and_named_terms():
    scores = _scorer(("tests.reward_fns:constant", 2.0), ("tests.reward_fns:parts", 0.5)).score(
        ITEMS, TEXTS, IDS, n=2, step=3, first=0)
    assert scores[0] == {"reward": 2 * 0.5 + 0.5 * 4, "reward/constant": 0.5, "reward/parts": 4.0,
                         "reward/parts/chars": 4.0}
    assert [s["reward/parts"] for s in scores] == [4.0, 1.0, 3.0, 0.0]


def test_seed_context_makes_a_random_reward_repeatable_wherever_it_runs():
    """Sample i of step s gets the same value whether scored in one call or split over processes (first=),
    and the caller's global RNG is left where it was."""
    random.seed(123)
    before = random.getstate()
    whole = _scorer(("tests.reward_fns:noisy", 1.0)).score(ITEMS, TEXTS, IDS, n=2, step=7, first=0)
    assert random.getstate() == before
    tail = _scorer(("tests.reward_fns:noisy", 1.0)).score(ITEMS[1:], TEXTS[2:], IDS[2:], n=2, step=7, first=2)
    assert tail == whole[2:]
    assert len({s["reward"] for s in whole}) == 4
    other_step = _scorer(("tests.reward_fns:noisy", 1.0)).score(ITEMS, TEXTS, IDS, n=2, step=8, first=0)
    assert other_step != whole


def test_raising_reward_names_function_step_and_sample():
    with pytest.raises(RewardError) as info:
        _scorer(("tests.reward_fns:constant", 1.0), ("tests.reward_fns:raising", 1.0)).score(
            ITEMS, ["x" * 1000, "b"], [[1], [2]], n=2, step=4, first=8)
    msg = str(info.value)
    assert "tests.reward_fns:raising (data.reward_fns[1].fn) at step 4, sample 8" in msg
    assert "ZeroDivisionError: the checker divided by zero" in msg
    assert "prompt 'ab:'" in msg and "response 'xxxx" in msg and "...'" not in msg and len(msg) < 700
    assert "\n" not in msg


def test_sleeping_reward_times_out():
    with pytest.raises(RewardError, match=r"tests.reward_fns:sleeping .* at step 2, sample 0 took longer than "
                                          r"data.reward_timeout_s=0.2 s; prompt 'ab:'"):
        _scorer(("tests.reward_fns:sleeping", 1.0), timeout_s=0.2).score(ITEMS, TEXTS, IDS, n=2, step=2, first=0)


def test_reward_that_is_not_a_number():
    with pytest.raises(RewardError, match=r"not_a_number .* returned 'high' for reward/not_a_number"):
        _scorer(("tests.reward_fns:not_a_number", 1.0)).score(ITEMS, TEXTS, IDS, n=2, step=1, first=0)


def test_chat_prompt_rendered_with_the_tokenizers_template(tmp_path):
    """A tokenizer built here with a template of its own (nothing downloaded), saved and loaded back as a
    model directory's tokenizer would be: the template, not a hard-coded format, renders the messages."""
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3="}]
    assert render_prompt(messages, loaded) == "<system>Be brief.<user>2+3=<assistant>"
    assert render_prompt("plain text", loaded) == "plain text"
    assert render_prompt(messages, build_tokenizer()) == "system: Be brief.\nuser: 2+3=\nassistant: "
    loaded.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(messages, loaded)


@pytest.mark.parametrize("row, message", [
    ({"question": "q"}, "row 2 has no column data.prompt_key='prompt'"),
    ({"prompt": 7}, "row 2: column data.prompt_key='prompt' must be text or a non-empty list of chat messages"),
    ({"prompt": [{"role": "user"}]}, "row 2: column data.prompt_key='prompt' message 0 needs a 'content' string"),
    ([1, 2], "row 2 is not an object of columns"),
])
def test_bad_rows_name_file_row_and_key(tmp_path, row, message):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "level": 1}) + "\n" + json.dumps(row) + "\n")
    cfg = _data_cfg(task="jsonl", path=str(path), reward_fn="tests.reward_fns:constant")
    with pytest.raises(ValueError) as info:
        get_task(cfg).build_dataset(0, 0)
    assert str(info.value).startswith(f"data.path='{path}' ") and message in str(info.value)


def test_rows_keep_every_column_and_chat_prompts(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    chat = [{"role": "user", "content": "2+2="}]
    path.write_text(json.dumps({"q": chat, "level": 3}) + "\n")
    items = get_task(_data_cfg(task="jsonl", path=str(path), prompt_key="q",
                               reward_fn="tests.reward_fns:constant")).build_dataset(0, 0)
    assert items == [{"q": chat, "level": 3, "prompt": chat}]  # no answer column needed by a custom reward
    # the driver checks rows before Ray starts: exit 2 naming the file, the row and the key
    assert cli([*TINY, "data.task=jsonl", f"data.path={path}"]) == 2
    assert f"data.path='{path}' row 1 has no column data.prompt_key='prompt'" in capsys.readouterr().err


def test_load_reward_fn_returns_the_function():
    from tests import reward_fns

    assert load_reward_fn("tests.reward_fns:constant", "k") is reward_fns.constant


def test_loggers_default_and_missing(monkeypatch, capsys):
    """null: console plus what is installed, said; a logger named but not installed: exit 2 with its pip."""
    from rayrl.trackers import resolve

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    names, said = resolve(None)
    assert names == ["console", "tensorboard", "wandb"]  # both are in the test extra
    assert said == "loggers: console, tensorboard, wandb (runner.loggers=null: console plus what is installed)"
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    assert resolve(None)[0] == ["console", "wandb"] and "tensorboard not installed" in resolve(None)[1]
    assert cli([*TINY, "runner.loggers=[tensorboard]"]) == 2
    assert capsys.readouterr().err.strip() == ("rayrl: config error: runner.loggers[0]: tensorboard is not "
                                               "installed: pip install tensorboard (or pip install -e '.[tensorboard]')")
