"""A least-recently-used map under a byte budget: the shared caches of in-process evaluation
(:class:`hivtp.vision.TowerCache`, :class:`hivtp.lmms.model.InputCache`) keep their entries here."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, ClassVar

__all__ = ["BudgetedCache", "ByteBudgetLRU"]


class ByteBudgetLRU:
    """Entries with a size each; while the sizes add up to more than ``max_bytes``, the least recently
    used entry goes (the newest always stays, so ``max_bytes=0`` keeps exactly one). The total is kept
    as entries come and go, never re-summed."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Store (or re-size, when the value grew in place) ``key``, then evict down to the budget."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        self._entries[key] = (value, nbytes)
        self.nbytes += nbytes
        while len(self._entries) > 1 and self.nbytes > self.max_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self.nbytes -= size

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


class BudgetedCache:
    """Base of a cache whose entries live in a :class:`ByteBudgetLRU`: its hit and miss counts, its
    budget (``max_bytes``; ``DEFAULT_MAX_BYTES`` when not given) and the bytes it holds."""

    DEFAULT_MAX_BYTES: ClassVar[int] = 2**30

    def __init__(self, max_bytes: int | None = None) -> None:
        self.hits = 0
        self.misses = 0
        self._entries = ByteBudgetLRU(self.DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)

    @property
    def max_bytes(self) -> int:
        return self._entries.max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._entries.nbytes

    def clear(self) -> None:
        self._entries.clear()
