"""The TRL side of ``python -m benchmarks.vs_trl``: TRL's GRPOTrainer on the benchmark's work, as a user would
run it. Runs in .venv-trl (scripts/setup_trl_env.sh), which has TRL but not rayrl: it imports only rayrl's
pure reward module from the checkout (the same reward the rayrl side scores with).

    python benchmarks/trl_job.py --model DIR --data FILE --out DIR [--steps N] [--save-every N] [--resume]
                                 [--steps-per-generation K] [--seed S]

Writes ``<out>/steps.jsonl`` (per finished step: step, when it began and ended, its reward mean, and the
seconds it spent generating and in all of its preparation: generation, rewards, old and reference log-probs;
appended across resumes) and, when done, the final weights into ``<out>/final``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # rayrl.data.rewards from this checkout

from datasets import load_dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rayrl.data.rewards import copy_pattern_reward  # noqa: E402

PROMPTS_PER_STEP, SAMPLES_PER_PROMPT, NEW_TOKENS = 8, 8, 12


def copy_pattern(prompts, completions, completion_ids, pattern, answer, **_):
    """rayrl's copy_pattern reward, in TRL's reward-function signature."""
    return [copy_pattern_reward({"pattern": p, "answer": a}, text, ids)
            for text, ids, p, a in zip(completions, completion_ids, pattern, answer)]


class TimedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer, timing its generation and its whole preparation of a batch (for the per-phase split)."""

    phase_s = {"gen_s": 0.0, "prepare_s": 0.0}

    @contextlib.contextmanager
    def _timed(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phase_s[phase] += time.perf_counter() - t0

    def _generate(self, *args, **kwargs):
        with self._timed("gen_s"):
            return super()._generate(*args, **kwargs)

    def _generate_and_score_completions(self, *args, **kwargs):
        with self._timed("prepare_s"):
            return super()._generate_and_score_completions(*args, **kwargs)


class StepLog(TrainerCallback):
    """One line per finished step, from TRL's own log of that step (which comes before its checkpoint)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_begin(self, args, state, control, **kwargs):
        self.began = time.time()
        TimedGRPOTrainer.phase_s.update(gen_s=0.0, prepare_s=0.0)

    def on_step_end(self, args, state, control, **kwargs):
        self.ended = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, "began": self.began, "time": self.ended,
                                    "reward_mean": logs["reward"], **TimedGRPOTrainer.phase_s}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--steps-per-generation", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    config = GRPOConfig(
        output_dir=str(a.out / "checkpoints"), use_cpu=True, seed=a.seed, max_steps=a.steps,
        per_device_train_batch_size=PROMPTS_PER_STEP * SAMPLES_PER_PROMPT, gradient_accumulation_steps=1,
        num_generations=SAMPLES_PER_PROMPT, steps_per_generation=a.steps_per_generation,
        max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=3e-3, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        beta=0.01, epsilon=0.2, num_iterations=1, loss_type="grpo", scale_rewards="group",
        logging_steps=1, report_to="none", disable_tqdm=True,
        save_strategy="steps" if a.save_every else "no", save_steps=a.save_every or 1,
        dataloader_num_workers=0,
    )
    trainer = TimedGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(a.model), reward_funcs=copy_pattern, args=config,
        train_dataset=load_dataset("json", data_files=a.data, split="train"),
        processing_class=AutoTokenizer.from_pretrained(a.model, padding_side="left"),
        callbacks=[StepLog(a.out / "steps.jsonl")],
    )
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    trainer.save_model(str(a.out / "final"))


if __name__ == "__main__":
    main()
