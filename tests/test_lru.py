"""The byte-budget LRU behind the in-process caches (hivtp.lru)."""

from __future__ import annotations

import pytest

from hivtp.lru import ByteBudgetLRU


def test_least_recently_used_goes_first_and_the_total_is_kept():
    lru = ByteBudgetLRU(max_bytes=10)
    lru.put("a", 1, 4)
    lru.put("b", 2, 4)
    assert lru.get("a") == 1  # a is now the most recently used
    lru.put("c", 3, 4)  # 12 > 10: b goes, not a
    assert (lru.get("b"), lru.get("a"), lru.get("c"), len(lru), lru.nbytes) == (None, 1, 3, 2, 8)


def test_a_value_that_grew_in_place_is_resized_and_may_evict_others():
    lru = ByteBudgetLRU(max_bytes=10)
    lru.put("a", [1], 3)
    lru.put("b", [2], 3)
    lru.put("b", [2, 2], 9)  # b grew: 12 > 10, so a (older) goes
    assert (lru.get("a"), lru.get("b"), lru.nbytes) == (None, [2, 2], 9)


def test_the_newest_entry_always_stays():
    lru = ByteBudgetLRU(max_bytes=0)
    for key in "abc":
        lru.put(key, key, 100)
    assert (len(lru), lru.get("c"), lru.nbytes) == (1, "c", 100)
    lru.clear()
    assert (len(lru), lru.nbytes) == (0, 0)
    with pytest.raises(ValueError, match="max_bytes"):
        ByteBudgetLRU(-1)
