"""Rate-limited warnings: a flood of bad requests or refused rows must not flood the log."""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["warn_limited"]

_LOG_REPEAT_S = 10.0  # the same kind of warning is logged at most once per this interval, with a count
_last_logged: dict[str, tuple[float, int]] = {}
_log_lock = threading.Lock()


def warn_limited(
    log: logging.Logger, key: str, msg: str, *args: object, interval_s: float = _LOG_REPEAT_S
) -> None:
    """A warning, but the same `key` at most once per `interval_s`, noting how many were suppressed."""
    now = time.monotonic()
    with _log_lock:
        last, suppressed = _last_logged.get(key, (float("-inf"), 0))
        if now - last < interval_s:
            _last_logged[key] = (last, suppressed + 1)
            return
        _last_logged[key] = (now, 0)
    if suppressed:
        msg += f" ({suppressed} similar messages suppressed)"
    log.warning(msg, *args)
