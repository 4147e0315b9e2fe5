"""Keep freed memory in the process during training (``performance.heap_reuse``, off by default; Linux/glibc).

glibc serves every allocation over 32 MB (and, by default, many over 128 KB) with a fresh ``mmap`` and
returns it to the kernel on ``free``. A training step allocates the same large buffers every time (the
word-embedding gradient alone is 30522 x 384 floats for MiniLM), so each step pays a page fault per
4 KB page to touch them again: zeroing that gradient took 15 ms fresh against 1.2 ms in reused memory
here. With ``M_MMAP_MAX=0`` and a large ``M_TRIM_THRESHOLD`` glibc keeps freed blocks in its heap for the next
step instead. In whole training runs the gain did not show: on the NER benchmark row (MiniLM, bf16, 63 steps)
``python benchmarks/train_throughput.py --task ner --ab nlpkit_heap_reuse=false`` measured 1.03x the speed with
it on, 95% interval 0.92-1.15 over 5 alternating repeats, with 2% more peak memory, so it is off by default
(docs/performance.md).

The same effect is available to any program through glibc's environment variables (``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=...``); doing it here makes it the default for nlpkit's runs and undoes it when
training ends (the defaults come back and ``malloc_trim`` hands the kept memory back). It covers the
training loop only, and starts with a ``malloc_trim``, so memory freed while reading data and loading the
model is not kept; what is kept is what the steps needed anyway (benchmarks/train_throughput.py reports
peak RSS beside speed).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from typing import Iterator

# glibc's mallopt parameter numbers (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP = 1 << 30  # keep up to 1 GiB of freed memory at the top of the heap


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None  # musl has no mallopt
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """While active, glibc keeps freed blocks for reuse; yields whether it could be turned on."""
    libc = _libc() if enabled else None
    if libc is not None:
        libc.malloc_trim(0)  # what was freed before (reading, tokenising, loading) is not kept
    on = bool(libc and libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, _KEEP))
    try:
        yield on
    finally:
        if libc is not None and on:
            libc.mallopt(M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, _DEFAULT_TRIM)
            libc.malloc_trim(0)
