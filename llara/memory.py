"""Memory housekeeping of a long-running process (the demo server): freed memory handed back to the system."""
from __future__ import annotations


def trim_heap() -> None:
    """Hand the memory freed while loading back to the operating system: loading converts and copies weights, and
    glibc keeps the freed blocks in its heap unless asked. A no-op where the C library has no ``malloc_trim``."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass
