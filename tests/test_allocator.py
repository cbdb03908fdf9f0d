"""The allocator setting that training, evaluation and the benchmark apply on glibc systems."""

from __future__ import annotations

import platform

import pytest

from scripts import allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_applies_on_glibc():
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory("true") is True


def test_keep_freed_memory_disabled(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *args: calls.append(args))
    assert allocator.keep_freed_memory(False) is False
    assert allocator.keep_freed_memory("false") is False
    assert calls == []


def test_keep_freed_memory_other_libc(monkeypatch):
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert allocator.keep_freed_memory() is False


def test_keep_freed_memory_rejects_non_flag():
    with pytest.raises(ValueError, match="keep_freed_memory"):
        allocator.keep_freed_memory("sometimes")
