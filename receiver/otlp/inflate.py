"""Bounded inflation of request bodies (gzip, zlib) for both transports, and giving freed memory back to the OS."""

from __future__ import annotations

import ctypes
import threading
import time
import zlib
from collections.abc import Callable

from receiver.otlp.errors import BadEncodingError, TooLargeError

GZIP_WBITS = 16 + zlib.MAX_WBITS


_PIECE = (
    1024 * 1024
)  # inflated output taken this much at a time: a bomb costs the limit plus one piece (zlib's


_FEED = 256 * 1024  # own growing buffer would cost up to twice the limit); input fed this much at a time


def inflate_limited(data: bytes, limit: int, wbits: int = GZIP_WBITS, what: str = "gzip") -> bytes:
    """Inflate gzip (`wbits` GZIP_WBITS; members may be concatenated) or zlib data, producing at most `limit` bytes.

    Shared by both transports (server.py inflates gRPC messages itself). Input is fed in _FEED slices (zlib copies
    what it leaves unconsumed) and output comes in _PIECE pieces, dropped as soon as the limit is passed; the
    caller then calls trim_heap_soon() to give the freed pages back.

    Raises:
        TooLargeError: the data inflates to more than `limit` bytes.
        BadEncodingError: the data is not `what`, is truncated, or has trailing bytes.
    """
    view, fed = memoryview(data), 0
    pending: bytes | memoryview = b""
    pieces: list[bytes] = []
    size = 0
    inflater = zlib.decompressobj(wbits)
    while True:
        if not pending and fed < len(view):
            pending, fed = view[fed : fed + _FEED], min(fed + _FEED, len(view))
        try:
            piece = inflater.decompress(pending, _PIECE)
        except zlib.error as exc:
            raise BadEncodingError(f"request is not valid {what}: {exc}") from None
        size += len(piece)
        if size > limit:
            pieces.clear()  # freed now, not when the traceback that holds this frame goes
            raise TooLargeError(
                f"request is larger than {limit // (1024 * 1024)} MiB after {what} decompression (OTAD_MAX_RECV_MIB)"
            )
        if piece:
            pieces.append(piece)
        pending = inflater.unconsumed_tail
        if inflater.eof:
            fed -= len(inflater.unused_data) + len(pending)  # where this stream ended
            if fed == len(view):
                return b"".join(pieces)
            if wbits != GZIP_WBITS:
                raise BadEncodingError(f"request has {len(view) - fed} bytes after its {what} data")
            inflater, pending = zlib.decompressobj(wbits), b""  # the next gzip member
        elif not piece and not pending and fed == len(view):
            raise BadEncodingError(f"{what} data is truncated")


class _HeapTrimmer:
    """glibc's malloc_trim(0), at most once per TRIM_INTERVAL_S, in a timer thread (~4 ms with 64 MiB free).

    A refused over-limit request leaves up to the limit freed in glibc's arenas (in pieces under its mmap
    threshold), which RSS keeps counting until glibc reuses it; malloc_trim gives the free pages back. A refusal
    inside the interval is covered by the one trim scheduled at its end. Without glibc (musl) this does nothing.
    """

    TRIM_INTERVAL_S = 1.0

    def __init__(self) -> None:
        self._trim: Callable[[int], object] | None
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._trim = None
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._scheduled = False

    def soon(self) -> None:
        if self._trim is None:
            return
        with self._lock:
            if self._scheduled:
                return
            self._scheduled = True
            delay = max(0.0, self._last + self.TRIM_INTERVAL_S - time.monotonic())
        timer = threading.Timer(delay, self._run)
        timer.daemon = True
        timer.name = "otad-malloc-trim"
        timer.start()

    def _run(self) -> None:
        with self._lock:
            self._scheduled, self._last = False, time.monotonic()
        assert self._trim is not None  # only scheduled with glibc
        self._trim(0)


trim_heap_soon = _HeapTrimmer().soon
