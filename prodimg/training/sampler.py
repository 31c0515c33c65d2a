"""A shuffled, sharded, resumable batch sampler: the data position is ``(epoch, batch)``."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices for process ``rank`` of ``num_replicas``.

    Epoch ``e`` is a permutation drawn from ``seed + e`` (independent of any global RNG), split into
    global batches of ``batch_size * num_replicas`` (the incomplete tail is dropped); process ``rank``
    takes its slice of each. :meth:`set_position` starts the next iteration at a given batch of a
    given epoch, so a resumed run reads exactly the batches an uninterrupted one would.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        global_batch = batch_size * num_replicas
        if num_samples < global_batch:
            raise ValueError(
                f"the dataset has {num_samples} examples, fewer than one global batch of {global_batch} "
                f"({batch_size} per process x {num_replicas} processes)"
            )
        self.num_samples, self.batch_size = num_samples, batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.batches_per_epoch = num_samples // global_batch
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, batch: int) -> None:
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"batch {batch} is outside an epoch of {self.batches_per_epoch} batches")
        self.epoch, self.start = epoch, batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(
                self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch)
            )
        else:
            order = torch.arange(self.num_samples)
        global_batch = self.batch_size * self.num_replicas
        start, self.start = self.start, 0
        for b in range(start, self.batches_per_epoch):
            lo = b * global_batch + self.rank * self.batch_size
            yield order[lo : lo + self.batch_size].tolist()


def endless_batches(loader, sampler: ResumableBatchSampler, state):
    """Endless batches from ``loader`` (whose batch sampler is ``sampler``), resuming at and advancing
    ``state.epoch`` / ``state.batch_in_epoch``: after each yield, ``state`` holds the data position
    following the batch just returned (what a checkpoint must store)."""
    while True:
        sampler.set_position(state.epoch, state.batch_in_epoch)
        for batch in loader:
            state.batch_in_epoch += 1
            yield batch
        state.epoch += 1
        state.batch_in_epoch = 0
