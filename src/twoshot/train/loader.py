"""The stream of training batches: seeded epochs, sharding across processes, exact resume.

Every batch is a pure function of (seed, epoch, position in the epoch, rank, world size): an
epoch is a seeded permutation of the dataset, cut into global batches of
``batch_size x world`` samples; process ``rank`` takes every ``world``-th sample of each
global batch (as ``DistributedSampler`` does), so the union over processes of one step's
batches is the same set of samples whatever the world size. The iteration number fixes the
max skip of the curriculum.

One DataLoader serves many epochs: its batch sampler is endless and each index carries
``(epoch, max_skip, index)``; the dataset wrapper calls ``set_epoch`` / ``set_max_skip`` in
whichever process makes the sample when they change. This is what rebuilding the loader per
epoch and per curriculum step would do, without restarting the worker processes -- a small
dataset (a handful of videos) has epochs of a single batch. The loader is rebuilt only when
the dataset object changes (a TrainingRegime switching phase) or on resume.

Each sample is also made with Python's, NumPy's and torch's global generators seeded from
(seed, epoch, index), so datasets that draw from the global generators are reproducible too,
independently of the worker that makes the sample. Each sample gets a ``sample_seed`` (int64,
from the same triple) for randomness the loss needs per sample (Cutie's point sampling).
Samples are :class:`~twoshot.data.batch.ClipBatch` items of one clip, batched by
:func:`~twoshot.data.batch.collate_clips`.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from twoshot.data.batch import ClipBatch, collate_clips
from twoshot.errors import UserError

ItemKey = tuple[int, int, int]  # (epoch, max_skip, dataset index)


@dataclass(frozen=True)
class SampleFailure:
    """A UserError raised while making a sample, carried to the main process as a value."""

    message: str


def epoch_order(length: int, global_batch: int, seed: int, epoch: int) -> list[int]:
    """Sample indices of one epoch, a multiple of ``global_batch`` long.

    A permutation of ``range(length)`` seeded by (seed, epoch), the incomplete last global
    batch dropped. A dataset smaller than one global batch is repeated (further seeded
    permutations) to fill one batch.
    """
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    order: list[int] = []
    while len(order) < global_batch:
        order += torch.randperm(length, generator=generator).tolist()
    return order[: len(order) - len(order) % global_batch]


def batches_per_epoch(length: int, global_batch: int) -> int:
    """Number of steps in one epoch of a dataset of ``length`` samples (>= 1)."""
    return max(1, length // global_batch)


class StreamSampler(Sampler[list[ItemKey]]):
    """Endless batch sampler of one process, starting at (epoch, position) and iteration ``it``.

    Yields, per step, this rank's ``batch_size`` keys ``(epoch, max_skip, index)``.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        epoch: int,
        position: int,
        it: int,
        skip_at: Callable[[int], int],
    ) -> None:
        self.length, self.batch_size, self.rank, self.world = length, batch_size, rank, world
        self.seed, self.epoch, self.position, self.it = seed, epoch, position, it
        self.skip_at = skip_at

    def __iter__(self) -> Iterator[list[ItemKey]]:
        global_batch = self.batch_size * self.world
        steps = batches_per_epoch(self.length, global_batch)
        epoch, position, it = self.epoch, self.position, self.it
        order = epoch_order(self.length, global_batch, self.seed, epoch)
        while True:
            if position >= steps:
                epoch, position = epoch + 1, 0
                order = epoch_order(self.length, global_batch, self.seed, epoch)
            chunk = order[position * global_batch : (position + 1) * global_batch]
            skip = self.skip_at(it)
            yield [(epoch, skip, index) for index in chunk[self.rank :: self.world]]
            position += 1
            it += 1


class StreamItems(Dataset[ClipBatch | SampleFailure]):
    """Wraps a clip dataset: applies a key's epoch and max skip, seeds the global generators.

    A UserError raised while making a sample (a bad video) is returned as a
    :class:`SampleFailure`, so that it reaches the main process as its own message instead of
    a worker traceback.
    """

    def __init__(self, dataset: Dataset[ClipBatch], seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self._epoch: int | None = None
        self._skip: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: ItemKey) -> ClipBatch | SampleFailure:
        epoch, skip, index = key
        try:
            if epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            if skip != self._skip and hasattr(self.dataset, "set_max_skip"):
                self.dataset.set_max_skip(skip)
            self._epoch, self._skip = epoch, skip
            sample = _seeded_call(
                lambda: self.dataset[index], _mix(self.seed, epoch, index), restore=get_worker_info() is None
            )
            if isinstance(sample, ClipBatch):
                # A seed of the sample's own for randomness in the loss (Cutie's point
                # sampling): the same whichever process or batch position the sample gets.
                seed = torch.tensor([_mix(self.seed, epoch, index, 1)], dtype=torch.int64)
                sample = sample.replace(sample_seed=seed)
            return sample
        except UserError as exc:
            return SampleFailure(str(exc))


def collate(samples: list[ClipBatch | SampleFailure]) -> ClipBatch | SampleFailure:
    """:func:`~twoshot.data.batch.collate_clips`, passing a sample's failure through instead."""
    for sample in samples:
        if isinstance(sample, SampleFailure):
            return sample
    return collate_clips(samples)  # type: ignore[arg-type]  # no failure among them


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed
    (torch seeds each worker differently; NumPy would otherwise repeat across workers)."""
    seed = torch.initial_seed() % (1 << 32)
    np.random.seed(seed)
    random.seed(seed)


class ClipStream:
    """Batches for the trainer, one per iteration, with a resumable position.

    batch_size: per process; rank/world: this process among ``world``; skip_at: max skip of
    the curriculum at an iteration; pin_memory: for CUDA transfers.
    """

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        seed: int,
        rank: int,
        world: int,
        skip_at: Callable[[int], int],
        pin_memory: bool = False,
    ) -> None:
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.rank, self.world, self.skip_at, self.pin_memory = rank, world, skip_at, pin_memory
        self.epoch = 0
        self.position = 0  # steps of ``epoch`` already consumed
        self.dataset: Dataset[ClipBatch] | None = None
        self._iterator: Iterator[Any] | None = None
        self._loader: DataLoader[Any] | None = None

    def state_dict(self) -> dict[str, int]:
        """{epoch, position}: where the next batch comes from."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int], dataset: Dataset[ClipBatch] | None) -> None:
        """Continue from ``state``; ``dataset`` is the one in use when the state was saved."""
        self.close()
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.dataset = dataset

    def next_batch(self, dataset: Dataset[ClipBatch], it: int) -> ClipBatch:
        """The batch of iteration ``it`` from ``dataset`` (a new dataset starts a new epoch).

        Raises UserError for an empty dataset or a sample that could not be made.
        """
        if dataset is not self.dataset:
            if self.dataset is not None:
                self.epoch, self.position = self.epoch + 1, 0
            self.close()
            self.dataset = dataset
        length = len(dataset)  # type: ignore[arg-type]
        if length == 0:
            raise UserError(
                "the training dataset is empty: no clip can be made from it "
                "(check --data, --dataset and --split)"
            )
        steps = batches_per_epoch(length, self.batch_size * self.world)
        if self.position >= steps:
            self.epoch, self.position = self.epoch + 1, 0
        if self._iterator is None:
            sampler = StreamSampler(
                length,
                self.batch_size,
                self.rank,
                self.world,
                self.seed,
                self.epoch,
                self.position,
                it,
                self.skip_at,
            )
            self._loader = DataLoader(
                StreamItems(dataset, self.seed),
                batch_sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=collate,
                pin_memory=self.pin_memory,
                worker_init_fn=seed_worker if self.num_workers else None,
                generator=torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.position)),
            )
            with _quiet_opencv_pool(self.num_workers > 0):
                self._iterator = iter(self._loader)  # forks the workers
        batch = next(self._iterator)
        self.position += 1
        if isinstance(batch, SampleFailure):
            raise UserError(batch.message)
        return batch

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        self._iterator = None
        self._loader = None


@contextlib.contextmanager
def _quiet_opencv_pool(forking: bool) -> Iterator[None]:
    """Park OpenCV's thread pool while DataLoader workers are forked.

    A worker forked while the parent's OpenCV pool has threads inherits the pool's state
    without its threads; ``cv2.setNumThreads`` in the worker (the clip datasets call it) then
    waits forever for them (observed: pthread_cond_destroy in the child). One thread in the
    parent during the fork avoids that; the parent's setting is restored right after.
    """
    cv2 = sys.modules.get("cv2") if forking else None
    if cv2 is None:
        yield
        return
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _mix(*values: int) -> int:
    """A 63-bit seed from several integers (SeedSequence mixing: nearby inputs differ)."""
    state = np.random.SeedSequence([int(v) % (1 << 64) for v in values]).generate_state(2, np.uint64)
    return int(state[0] >> np.uint64(1))


def _seeded_call(make: Callable[[], Any], seed: int, restore: bool) -> Any:
    """Run ``make`` with random, NumPy and torch (CPU) global generators seeded by ``seed``.

    restore: put the caller's generator states back afterwards (in the main process, where
    they belong to the training loop).
    """
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if restore else None
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.default_generator.manual_seed(seed)  # CPU only: CUDA streams are the loop's
    try:
        return make()
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
