"""Keep freed memory in the process, so that large CPU tensors reuse pages instead of faulting in new ones.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults, a block of several MiB is
either mapped afresh (``mmap``) or, once freed at the top of the heap, handed back to the system (``trim``). Either
way the next tensor of that size touches pages that are new to the process, and the kernel faults in and zeroes
each 4 KiB page. A training step allocates and frees dozens of such tensors, and on a virtual machine each fault is
slow: on the 2-core machine of ``docs/benchmarks.md`` it cost as much as the arithmetic. A loss pass that
allocated five full-size tensors took 22 ms with the defaults and 9 ms with the settings below, and one training
step of the default UNet took 0.28 s instead of 0.30 s.

:func:`keep_freed_memory` raises two glibc thresholds with ``mallopt``: blocks under 32 MiB come from the heap
rather than ``mmap``, and the heap keeps up to 256 MiB of freed memory instead of trimming it. The resident size
then stays near the peak of a step, plus at most that margin. Loader processes forked afterwards inherit the
settings. The performance tuning guide of Intel Extension for PyTorch recommends jemalloc or TCMalloc through
``LD_PRELOAD`` for the same reason (they reuse memory more than the default ``malloc``). That needs a package and an
environment variable, and this needs neither. On other C libraries (macOS, Windows, musl) the function does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

from .options import as_bool

logger = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # DEFAULT_MMAP_THRESHOLD_MAX, glibc's upper limit on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def keep_freed_memory(enabled: bool | str = True) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; return whether the settings took effect.

    Args:
        enabled: ``False`` (or ``"false"`` from the command line) leaves the allocator as it is.
    """
    if not as_bool("keep_freed_memory", enabled):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.debug("keep_freed_memory: not a glibc system, so the allocator is left as it is.")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as error:
        logger.debug("keep_freed_memory: glibc's mallopt is not available (%s).", error)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not applied:
        logger.debug("keep_freed_memory: mallopt failed to set the thresholds, so the allocator keeps its defaults.")
    return applied
