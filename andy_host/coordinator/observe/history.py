"""The dashboard's recent past: one point a second of running totals, kept for
``HISTORY_SECONDS``.

Each point holds the totals since start of work requests (chat, completions and
embeddings, OpenAI's and Ollama's; not model lists or status reads), of those the
pool failed (status 5xx, including a stream that ended in an error event), of
completion tokens, and of times to first token counted into fixed buckets. Rates
and summaries are differences between two points, so the memory is bounded by the
number of points whatever the traffic, and a time-to-first-token percentile is read
from the bucket counts the way Prometheus' ``histogram_quantile`` reads them.
Everything here is pure: the sampler calls :meth:`History.sample` every second.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

HISTORY_SECONDS = 600  # points kept: ten minutes at one a second
SUMMARY_SECONDS = 300  # the window of the error rate and time-to-first-token figures
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
WORK_ENDPOINTS = frozenset({"chat", "completions", "embeddings", "ollama_chat", "ollama_generate", "ollama_embed"})


@dataclass(frozen=True, slots=True)
class Point:
    """Running totals at one instant."""

    t: float
    requests: int
    errors: int
    tokens: int
    ttft_sum: float
    ttft_buckets: tuple[int, ...]  # counts per bucket (the last one: above every bound)


def quantile(q: float, counts: list[int], bounds: tuple[float, ...] = TTFT_BUCKETS) -> float | None:
    """The q-quantile of values counted into ``bounds`` (linear within a bucket; the
    highest bound when it falls above every bound), or None with nothing counted."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * max(rank - seen, 0.0) / count
        seen += count
    return bounds[-1]


class History:
    """Running totals, and the points sampled from them."""

    def __init__(self, seconds: int = HISTORY_SECONDS, bounds: tuple[float, ...] = TTFT_BUCKETS) -> None:
        self.bounds = bounds
        self.points: deque[Point] = deque(maxlen=seconds)
        self._requests = 0
        self._errors = 0
        self._tokens = 0
        self._ttft_sum = 0.0
        self._ttft = [0] * (len(bounds) + 1)
        self.sample()  # the start: what comes before the first sample counts too

    def request(self, endpoint: str, status: int) -> None:
        if endpoint in WORK_ENDPOINTS:
            self._requests += 1
            self._errors += status >= 500

    def tokens(self, count: int) -> None:
        self._tokens += count

    def ttft(self, seconds: float) -> None:
        self._ttft[bisect.bisect_left(self.bounds, seconds)] += 1
        self._ttft_sum += seconds

    def sample(self, now: float | None = None) -> None:
        """One point (called every second)."""
        self.points.append(Point(time.time() if now is None else now, self._requests, self._errors,
                                 self._tokens, self._ttft_sum, tuple(self._ttft)))

    def rates(self, last: int = 120) -> list[dict[str, float]]:
        """Requests, errors and tokens per second between consecutive points, the last ``last``."""
        points = list(itertools.islice(self.points, max(len(self.points) - last - 1, 0), None))
        out = []
        for a, b in itertools.pairwise(points):
            span = max(b.t - a.t, 1e-6)
            out.append({"t": round(b.t, 1), "requests_per_s": round((b.requests - a.requests) / span, 3),
                        "errors_per_s": round((b.errors - a.errors) / span, 3),
                        "tokens_per_s": round((b.tokens - a.tokens) / span, 2)})
        return out

    def summary(self, seconds: float = SUMMARY_SECONDS) -> dict[str, Any]:
        """Requests, the share the pool failed, and time to first token (mean, median,
        95th percentile, in seconds) over the last ``seconds`` (or since the oldest point)."""
        if not self.points:
            return {"seconds": 0, "requests": 0, "errors": 0, "error_rate": None,
                    "ttft_count": 0, "ttft_mean": None, "ttft_p50": None, "ttft_p95": None}
        newest = self.points[-1]
        oldest = next((p for p in self.points if p.t >= newest.t - seconds), newest)
        requests, errors = newest.requests - oldest.requests, newest.errors - oldest.errors
        counts = [b - a for a, b in zip(oldest.ttft_buckets, newest.ttft_buckets, strict=True)]
        firsts = sum(counts)
        p50, p95 = quantile(0.5, counts, self.bounds), quantile(0.95, counts, self.bounds)
        return {
            "seconds": round(newest.t - oldest.t),
            "requests": requests,
            "errors": errors,
            "error_rate": round(errors / requests, 4) if requests else None,
            "ttft_count": firsts,
            "ttft_mean": round((newest.ttft_sum - oldest.ttft_sum) / firsts, 3) if firsts else None,
            "ttft_p50": None if p50 is None else round(p50, 3),
            "ttft_p95": None if p95 is None else round(p95, 3),
        }
