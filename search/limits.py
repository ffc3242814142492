"""Per-visitor rate limits for a public app: token buckets keyed by IP address and by session."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


class RateLimited(Exception):
    """Too many requests from one visitor: `retry_after` seconds until the next one is allowed."""

    def __init__(self, what: str, per_minute: int, retry_after: float) -> None:
        super().__init__(f"too many {what}: at most {per_minute} a minute; try again in {retry_after:.0f} s")
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute on average, bursts of up to `burst`.

    Keys are forgotten least-recently-used past `max_keys`, so a flood of new keys costs bounded memory
    (a forgotten key starts with a full bucket, which only errs towards letting a visitor through)."""

    def __init__(self, what: str, per_minute: int, burst: int | None = None, max_keys: int = 100_000,
                 clock=time.monotonic) -> None:  # noqa: ANN001 (a callable returning seconds)
        if per_minute < 1:
            raise ValueError(f"per_minute must be >= 1, got {per_minute}")
        self.what, self.per_minute = what, per_minute
        self.burst = float(burst or per_minute)
        self.max_keys, self.clock = max_keys, clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, *keys: str) -> None:
        """Spend one request for every key (e.g. the IP and the session), or raise RateLimited spending none."""
        now = self.clock()
        rate = self.per_minute / 60.0
        with self._lock:
            buckets = []
            for key in dict.fromkeys(k for k in keys if k):
                b = self._buckets.pop(key, None) or _Bucket(self.burst, now)
                b.tokens, b.stamp = min(self.burst, b.tokens + (now - b.stamp) * rate), now
                self._buckets[key] = b  # most recently used last
                buckets.append(b)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            short = [b for b in buckets if b.tokens < 1.0]
            if short:
                raise RateLimited(self.what, self.per_minute, max((1.0 - b.tokens) / rate for b in short))
            for b in buckets:
                b.tokens -= 1.0
