"""Cutie's key-value memory of one propagation run: working memory and long-term memory,
in buckets of objects.

A *bucket* holds the objects enabled together (that first appeared on the same annotated
frame) and the memory they read: its own keys, shrinkage and, per object, values, for the
memory frames added since the bucket was created. As in the reference
(hkchengrex/Cutie ``inference/kv_memory_store.py`` and ``memory_manager.py``):

- A bucket's first memory frame is *permanent* (kept first, never evicted); later frames are
  appended in order.
- Without long-term memory, each bucket keeps its permanent frame plus the most recent
  ``max_mem_frames - 1`` frames (FIFO).
- With long-term memory, the non-permanent entries also carry the query-side selection and
  usage counts (affinity received per read, normalised by reads lived). When a bucket holds
  ``max_mem_frames - 1`` non-permanent frames, all but the newest ``min_mem_frames - 1`` are
  consolidated: the ``num_prototypes`` most used entries become prototype keys, and every
  candidate's value and shrinkage is pooled into them with a softmax of the similarity;
  prototypes go to the long-term memory, read before the working memory. When the
  long-term memory would pass ``max_num_tokens``, only its most used
  ``max_num_tokens - num_prototypes - buffer_tokens`` entries survive (in order of usage).

Token counts are in entries: one entry per stride-16 position of a frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twoshot.model.cutie.memory_read import readout, similarity, softmax_full, softmax_top_k


@dataclass(frozen=True)
class MemorySettings:
    """How much a run remembers (Cutie's ``eval_config.yaml`` names and defaults).

    max_mem_frames: frames of working memory, the permanent one included (with long-term
    memory: reaching it triggers a consolidation); long_term: consolidate into long-term
    memory instead of dropping the oldest frames; then min_mem_frames: working frames kept
    after a consolidation (permanent included),
    num_prototypes: prototypes per consolidation, max_num_tokens / buffer_tokens: cap of the
    long-term memory and the room made below it when it is reached; top_k: entries each
    query reads.
    """

    max_mem_frames: int = 5
    long_term: bool = False
    min_mem_frames: int = 5
    num_prototypes: int = 128
    max_num_tokens: int = 10_000
    buffer_tokens: int = 2_000
    top_k: int = 30

    def __post_init__(self) -> None:
        if self.max_mem_frames < 1 or (self.long_term and self.max_mem_frames < 2):
            raise ValueError(
                f"max_mem_frames must be at least {2 if self.long_term else 1}, got {self.max_mem_frames}"
            )
        if self.long_term and not 1 <= self.min_mem_frames < self.max_mem_frames:
            raise ValueError(
                f"min_mem_frames must be in 1..{self.max_mem_frames - 1}, got {self.min_mem_frames}"
            )
        if self.long_term and self.max_num_tokens - self.num_prototypes - self.buffer_tokens < 1:
            raise ValueError("max_num_tokens must exceed num_prototypes + buffer_tokens")
        if self.num_prototypes < 1 or self.top_k < 1:
            raise ValueError("num_prototypes and top_k must be at least 1")


class _LongTerm:
    """Prototypes of one bucket: keys [1, Ck, L], shrinkage [1, 1, L], values [1, K_b, Cv, L],
    usage counts use / life [1, L]."""

    def __init__(self, keys: torch.Tensor, shrinkage: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.shrinkage, self.values = keys, shrinkage, values
        self.use = torch.zeros((1, keys.shape[-1]), device=keys.device, dtype=torch.float32)
        self.life = self.use + 1e-7

    @property
    def size(self) -> int:
        return self.keys.shape[-1]

    def append(self, keys: torch.Tensor, shrinkage: torch.Tensor, values: torch.Tensor) -> None:
        fresh = _LongTerm(keys, shrinkage, values)
        self.keys = torch.cat([self.keys, keys], -1)
        self.shrinkage = torch.cat([self.shrinkage, shrinkage], -1)
        self.values = torch.cat([self.values, values], -1)
        self.use = torch.cat([self.use, fresh.use], -1)
        self.life = torch.cat([self.life, fresh.life], -1)

    def count(self, usage: torch.Tensor) -> None:
        """Add one read's usage [1, L]."""
        if usage.shape[-1]:
            self.use += usage.view_as(self.use)
            self.life += 1

    def keep_most_used(self, count: int) -> None:
        """Keep the ``count`` entries of highest use / life, most used first."""
        survivors = torch.topk((self.use / self.life)[0], k=count).indices
        self.keys = self.keys[:, :, survivors]
        self.shrinkage = self.shrinkage[:, :, survivors]
        self.values = self.values[..., survivors]
        self.use = self.use[:, survivors]
        self.life = self.life[:, survivors]


class Bucket:
    """Objects ``[first, stop)`` (enabling order) and their working / long-term memory.

    Working memory: keys [1, Ck, N], shrinkage [1, 1, N], values [1, K_b, Cv, N], the first
    ``permanent`` entries permanent; with long-term memory also selection [1, Ck, N - permanent]
    and usage use / life [1, N - permanent] of the non-permanent entries.
    """

    def __init__(self, first: int, stop: int) -> None:
        self.first, self.stop = first, stop
        self.keys: torch.Tensor | None = None
        self.shrinkage: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.selection: torch.Tensor | None = None
        self.use: torch.Tensor | None = None
        self.life: torch.Tensor | None = None
        self.permanent = 0
        self.long: _LongTerm | None = None

    @property
    def size(self) -> int:
        """Working-memory entries."""
        return 0 if self.keys is None else self.keys.shape[-1]

    @property
    def temporary_size(self) -> int:
        """Non-permanent working-memory entries."""
        return self.size - self.permanent

    def add(
        self, key: torch.Tensor, shrinkage: torch.Tensor, selection: torch.Tensor | None, values: torch.Tensor
    ) -> None:
        """Append one frame: key [1, Ck, n], shrinkage [1, 1, n], selection [1, Ck, n] (kept
        with long-term memory, None otherwise), values [1, K_b, Cv, n]. The bucket's first
        frame becomes its permanent memory."""
        if self.keys is None:
            self.keys, self.shrinkage, self.values = key, shrinkage, values
            self.permanent = key.shape[-1]
            return
        assert self.shrinkage is not None and self.values is not None
        self.keys = torch.cat([self.keys, key], -1)
        self.shrinkage = torch.cat([self.shrinkage, shrinkage], -1)
        self.values = torch.cat([self.values, values], -1)
        if selection is not None:
            use = torch.zeros((1, key.shape[-1]), device=key.device, dtype=torch.float32)
            life = use + 1e-7
            self.selection = (
                selection if self.selection is None else torch.cat([self.selection, selection], -1)
            )
            self.use = use if self.use is None else torch.cat([self.use, use], -1)
            self.life = life if self.life is None else torch.cat([self.life, life], -1)

    def count(self, usage: torch.Tensor) -> None:
        """Add one read's usage [1, N] of the working memory (the permanent part is not counted)."""
        usage = usage[:, self.permanent :]
        if usage.shape[-1] == 0 or self.use is None or self.life is None:
            return
        self.use += usage.view_as(self.use)
        self.life += 1

    def drop_temporary(self, start: int, end: int) -> None:
        """Remove non-permanent entries ``[start, end)`` (indices among the non-permanent ones)."""
        assert self.keys is not None and self.shrinkage is not None and self.values is not None
        a, b = self.permanent + start, self.permanent + end

        def cut(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
            return torch.cat([t[..., :lo], t[..., hi:]], -1)

        self.keys, self.shrinkage, self.values = (
            cut(self.keys, a, b),
            cut(self.shrinkage, a, b),
            cut(self.values, a, b),
        )
        if self.selection is not None:
            self.selection = cut(self.selection, start, end)
        if self.use is not None and self.life is not None:
            self.use, self.life = cut(self.use, start, end), cut(self.life, start, end)

    def memory(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(keys [1, Ck, L+N], shrinkage [1, 1, L+N], values [1, K_b, Cv, L+N], L): the long-term
        entries (L of them) followed by the working memory, as a query reads them."""
        assert self.keys is not None and self.shrinkage is not None and self.values is not None
        if self.long is None:
            return self.keys, self.shrinkage, self.values, 0
        return (
            torch.cat([self.long.keys, self.keys], -1),
            torch.cat([self.long.shrinkage, self.shrinkage], -1),
            torch.cat([self.long.values, self.values], -1),
            self.long.size,
        )


class KeyValueMemory:
    """The buckets of one run under :class:`MemorySettings`; see the module docstring."""

    def __init__(self, settings: MemorySettings) -> None:
        self.settings = settings
        self.buckets: list[Bucket] = []
        self.frame_tokens = 0  # entries per frame, set by the first add
        self.peak_frames = 0

    def new_bucket(self, first: int, stop: int) -> None:
        """Objects ``[first, stop)`` form a bucket; it gets memory from the next :meth:`add` on."""
        self.buckets.append(Bucket(first, stop))

    @property
    def working_frames(self) -> int:
        """Most working-memory frames any bucket holds now (the permanent one included)."""
        if not self.frame_tokens:
            return 0
        return max(b.size for b in self.buckets) // self.frame_tokens

    @property
    def long_term_tokens(self) -> int:
        """Most long-term entries any bucket holds now."""
        return max((b.long.size for b in self.buckets if b.long is not None), default=0)

    def add(
        self, key: torch.Tensor, shrinkage: torch.Tensor, selection: torch.Tensor, values: torch.Tensor
    ) -> None:
        """Add a memory frame to every bucket.

        key [1, Ck, h, w], shrinkage [1, 1, h, w], selection [1, Ck, h, w], values
        [1, K, Cv, h, w] for every enabled object (each bucket takes its own objects' values).
        Then each bucket drops its oldest frames, or consolidates them into long-term memory.
        """
        s = self.settings
        self.frame_tokens = key.shape[-2] * key.shape[-1]
        key, shrinkage, values = key.flatten(2), shrinkage.flatten(2), values.flatten(3)
        kept_selection = selection.flatten(2) if s.long_term else None
        for bucket in self.buckets:
            bucket.add(key, shrinkage, kept_selection, values[:, bucket.first : bucket.stop])
        max_tokens = (s.max_mem_frames - 1) * self.frame_tokens
        for bucket in self.buckets:
            if not s.long_term:
                if bucket.temporary_size > max_tokens:
                    bucket.drop_temporary(0, bucket.temporary_size - max_tokens)
            elif bucket.temporary_size >= max_tokens:
                if bucket.long is not None and bucket.long.size >= s.max_num_tokens - s.num_prototypes:
                    bucket.long.keep_most_used(s.max_num_tokens - s.num_prototypes - s.buffer_tokens)
                self._consolidate(bucket)
        self.peak_frames = max(self.peak_frames, self.working_frames)

    def _consolidate(self, bucket: Bucket) -> None:
        """Move all but the newest ``min_mem_frames - 1`` non-permanent frames of ``bucket`` into
        prototypes in its long-term memory."""
        assert bucket.keys is not None and bucket.shrinkage is not None and bucket.values is not None
        assert bucket.selection is not None and bucket.use is not None and bucket.life is not None
        keep = (self.settings.min_mem_frames - 1) * self.frame_tokens
        start, stop = bucket.permanent, bucket.size - keep
        count = stop - start
        if count <= 0:
            return
        keys, shrinkage = bucket.keys[:, :, start:stop], bucket.shrinkage[:, :, start:stop]
        selection = bucket.selection[:, :, :count]
        usage = (bucket.use / bucket.life)[:, :count]
        picked = torch.topk(usage[0], k=min(self.settings.num_prototypes, count), dim=-1, sorted=True).indices
        affinity = softmax_full(similarity(keys, shrinkage, keys[:, :, picked], selection[:, :, picked]))
        # One readout per object, as the reference pools each object's values separately.
        values = torch.stack(
            [bucket.values[:, i, :, start:stop] @ affinity for i in range(bucket.values.shape[1])], dim=1
        )
        prototype_shrinkage = shrinkage @ affinity
        bucket.drop_temporary(0, count)
        if bucket.long is None:
            bucket.long = _LongTerm(keys[:, :, picked], prototype_shrinkage, values)
        else:
            bucket.long.append(keys[:, :, picked], prototype_shrinkage, values)

    def read(self, query_key: torch.Tensor, query_selection: torch.Tensor) -> list[torch.Tensor]:
        """Memory readout of every bucket's objects for one query frame.

        query_key, query_selection [1, Ck, h, w]. Returns one [1, K_b, Cv, h, w] per bucket, in
        bucket order; with long-term memory the usage of the entries read is counted.
        """
        height, width = query_key.shape[-2:]
        qk, qe = query_key.flatten(2), query_selection.flatten(2)
        out = []
        for bucket in self.buckets:
            if bucket.keys is None:
                raise RuntimeError(
                    f"objects {bucket.first}..{bucket.stop - 1} have no memory yet: "
                    "a frame that enables objects must be memorised before the next segment"
                )
            keys, shrinkage, values, long_size = bucket.memory()
            affinity, usage = softmax_top_k(similarity(keys, shrinkage, qk, qe), self.settings.top_k)
            if self.settings.long_term:
                bucket.count(usage[:, long_size:])
                if bucket.long is not None:
                    bucket.long.count(usage[:, :long_size])
            out.append(readout(affinity, values).view(1, values.shape[1], values.shape[2], height, width))
        return out
