"""The memory of one propagation direction: keys and values of past frames, read with top-k.

STCN's YouTube-VOS evaluation keeps one memory bank per object: an object that first
appears on frame s remembers frames from s on, while objects present since frame 0 also
remember the earlier frames; every enabled object adds a value on every memory frame, and
every bank shares the frames' keys. Here the keys are stored once, objects are kept in
*groups* (the objects that first appeared on the same annotated frame), and each group reads
the entries added since it appeared: the same affinities, top-k and readouts as STCN's
per-object banks, with one affinity computation per group instead of one per object.

Entries are ordered as STCN concatenates them (permanent frames in the order added, then
the temporary "last frame"), so top-k ties and float sums come out the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twoshot.model.stcn.memory import memory_affinity, readout


@dataclass
class MemoryEntry:
    """One memory frame. key [Ck, N1]; values [K_e, Cv, N1] for the K_e objects enabled when
    it was added (in enabling order); pinned entries (annotated frames) are never dropped."""

    serial: int
    key: torch.Tensor
    values: torch.Tensor
    pinned: bool


@dataclass
class ObjectGroup:
    """Objects ``[first, stop)`` (enabling order) that read the entries with serial >= ``since``."""

    first: int
    stop: int
    since: int


class MemoryStore:
    """Permanent memory frames, an optional temporary one, and the object groups reading them.

    max_frames: cap on permanent entries (None = unbounded); when exceeded the oldest
    unpinned entry is dropped. Pinned entries are always kept, even beyond the cap.
    """

    def __init__(self, max_frames: int | None = None) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.max_frames = max_frames
        self.entries: list[MemoryEntry] = []
        self.temporary: MemoryEntry | None = None
        self.groups: list[ObjectGroup] = []
        self.num_objects = 0
        self.peak_frames = 0
        self._serial = 0
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_frames(self) -> int:
        """Number of permanent memory frames."""
        return len(self.entries)

    def add_objects(self, count: int) -> None:
        """Enable ``count`` new objects; they read memory from the next entry added on."""
        self.groups.append(ObjectGroup(self.num_objects, self.num_objects + count, self._serial))
        self.num_objects += count

    def add(
        self, key: torch.Tensor, values: torch.Tensor, *, temporary: bool = False, pinned: bool = False
    ) -> None:
        """Add a frame. key [Ck, h, w]; values [K, Cv, h, w] for every enabled object.

        As in STCN, any addition discards the previous temporary frame; a temporary frame is
        only read until the next addition.
        """
        if values.shape[0] != self.num_objects:
            raise ValueError(f"values for {values.shape[0]} objects, {self.num_objects} enabled")
        entry = MemoryEntry(self._serial, key.flatten(1), values.flatten(2), pinned)
        self._serial += 1
        self.temporary = None
        if temporary and self.entries:
            self.temporary = entry
            return
        self.entries.append(entry)
        self._cache.clear()
        if self.max_frames is not None and len(self.entries) > self.max_frames:
            # Drop the oldest frame that is not an annotation; when every older frame is one,
            # that is the frame just added.
            for index, old in enumerate(self.entries):
                if not old.pinned:
                    del self.entries[index]
                    break
        self.peak_frames = max(self.peak_frames, len(self.entries))

    def _group_memory(self, group: ObjectGroup) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys [1, Ck, N], values [1, K_g, Cv, N]) of the permanent entries a group reads."""
        cached = self._cache.get(id(group))
        if cached is None:
            entries = [e for e in self.entries if e.serial >= group.since]
            keys = torch.cat([e.key for e in entries], dim=1)[None]
            values = torch.cat([e.values[group.first : group.stop] for e in entries], dim=2)[None]
            cached = self._cache[id(group)] = (keys, values)
        return cached

    def read(self, query_key: torch.Tensor, top_k: int) -> torch.Tensor:
        """Memory readout for every enabled object.

        query_key [1, Ck, h, w] -> [1, K, Cv, h, w] (objects in enabling order).
        """
        if not self.groups:
            raise RuntimeError("memory read before any object was enabled")
        _, _, h, w = query_key.shape
        query = query_key.flatten(2)
        outputs = []
        for group in self.groups:
            keys, values = self._group_memory(group)
            if self.temporary is not None:
                keys = torch.cat([keys, self.temporary.key[None]], dim=2)
                values = torch.cat([values, self.temporary.values[None, group.first : group.stop]], dim=3)
            affinity = memory_affinity(keys, query, top_k)
            outputs.append(readout(affinity, values))
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        return out.view(*out.shape[:3], h, w)
