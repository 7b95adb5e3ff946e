"""Two writers saving different entries of one function's kernel cache at once keep each entry's own data
(kernels/numba_cpu/cache_lock.py): without the lock both pick the same data file and the index maps one
entry to the other's code."""

import threading
import time

import pytest

pytest.importorskip("fcntl")

import kernels.numba_cpu  # noqa: E402,F401  (installs the lock)
from numba.core.caching import IndexDataCacheFile  # noqa: E402


def _racing_saves(tmp_path, monkeypatch):
    """Two threads save keys "a" and "b" (each its own file object, as two processes would) with the
    index write slowed down so that their read-modify-write cycles overlap."""
    slow = IndexDataCacheFile._save_index

    def save_index(self, overloads):
        time.sleep(0.2)
        slow(self, overloads)

    monkeypatch.setattr(IndexDataCacheFile, "_save_index", save_index)

    def writer(key):
        IndexDataCacheFile(str(tmp_path), "fn-1.py311", "stamp").save(key, f"code of {key}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = IndexDataCacheFile(str(tmp_path), "fn-1.py311", "stamp")
    return {k: reader.load(k) for k in "ab"}


def test_concurrent_saves_keep_each_entry(tmp_path, monkeypatch):
    assert IndexDataCacheFile.save._locked and IndexDataCacheFile.load._locked
    loaded = _racing_saves(tmp_path, monkeypatch)
    # an entry may only be lost to the last index write without the lock; with it both are there, each
    # with its own data
    assert loaded == {"a": "code of a", "b": "code of b"}


def test_the_race_is_real_without_the_lock(tmp_path, monkeypatch):
    """The same writers on numba's unlocked methods: an entry is lost or maps to the other's data (so the
    test above tests the lock, not luck)."""
    monkeypatch.setattr(IndexDataCacheFile, "save", IndexDataCacheFile.save.__wrapped__)
    monkeypatch.setattr(IndexDataCacheFile, "load", IndexDataCacheFile.load.__wrapped__)
    loaded = _racing_saves(tmp_path, monkeypatch)
    assert loaded != {"a": "code of a", "b": "code of b"}
