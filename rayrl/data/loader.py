"""Seeded, resumable prompt batches: torchdata's StatefulDataLoader plus an epoch-rolling stream."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler


def _as_list(items: list) -> list:
    """Collate: a batch is just the list of its elements (item dicts or dataset positions)."""
    return list(items)


class Batch(NamedTuple):
    """One step's prompts, the epoch they belong to and their positions in the dataset (the sample ledger)."""

    items: list[dict]
    epoch: int
    indices: list[int]


def make_dataloader(dataset: list, batch_size: int, seed: int) -> StatefulDataLoader:
    """Shuffled, drop_last, single-process loader whose state_dict() captures position and sampler RNG.

    The sampler gets its own seeded generator and the loader a separate throwaway one. Sharing one (what
    `shuffle=True, generator=g` does) breaks resume: every new epoch iterator also draws a worker base seed
    from the loader's generator, a draw the restored sampler state does not replay, so every epoch after
    a resume would be shuffled differently from an uninterrupted run. With num_workers=0 that base seed is
    never used, so the throwaway generator's state needs no saving.
    """
    if batch_size < 1 or len(dataset) < batch_size:
        raise ValueError(f"data.batch_size={batch_size} must be >= 1 and <= the dataset size {len(dataset)}")
    sampler_rng = torch.Generator()
    sampler_rng.manual_seed(seed)
    with warnings.catch_warnings():
        # torchdata 0.11 calls the deprecated torch.set_vital on construction; nothing we can act on
        warnings.filterwarnings("ignore", message=".*set_vital.*")
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=RandomSampler(dataset, generator=sampler_rng),
            drop_last=True,
            num_workers=0,
            collate_fn=_as_list,
            generator=torch.Generator(),
        )


class BatchStream:
    """An endless stream of batches that rolls over epochs and resumes exactly where it was saved.

    next() -> Batch(items, epoch, indices). The loader shuffles dataset positions, so every batch knows which
    prompts it holds (its ledger entry); the loader's state depends only on the dataset's size. state_dict() holds plain ints and the loader's state (ints, bools, a uint8
    RNG tensor), so torch.save / torch.load(weights_only=True) round-trip it. A stream restored from a
    state saved after the last batch of an epoch continues with the first batch of the next epoch, shuffled
    exactly as an uninterrupted stream would shuffle it.
    """

    def __init__(self, dataset: list[dict], batch_size: int, seed: int) -> None:
        self._dataset = dataset
        self._loader = make_dataloader(range(len(dataset)), batch_size, seed)
        self._dataset_size = len(dataset)
        self._batch_size = batch_size
        self._iter: Any = None
        self.epoch = 0
        self.consumed_samples = 0

    def next(self) -> Batch:
        if self._iter is None:
            self._iter = iter(self._loader)
        try:
            indices = next(self._iter)
        except StopIteration:
            self.epoch += 1
            self._iter = iter(self._loader)
            indices = next(self._iter)  # never empty: the dataset holds at least one batch
        self.consumed_samples += len(indices)
        return Batch([self._dataset[i] for i in indices], self.epoch, [int(i) for i in indices])

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed_samples": self.consumed_samples,
            "dataset_size": self._dataset_size,
            "batch_size": self._batch_size,
            "loader": self._loader.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved position; refuses a state from a different dataset size or batch size, where the
        saved position would silently point at other samples."""
        saved = (state["dataset_size"], state["batch_size"])
        if saved != (self._dataset_size, self._batch_size):
            raise ValueError(
                f"data state is for dataset size {saved[0]} and data.batch_size={saved[1]}, "
                f"not {self._dataset_size} and {self._batch_size}"
            )
        self._loader.load_state_dict(state["loader"])
        self._iter = None
        self.epoch = state["epoch"]
        self.consumed_samples = state["consumed_samples"]
