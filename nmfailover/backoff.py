"""How long to wait between attempts at something that keeps failing (reaching a bus, activating a profile,
restarting a crashed task): growing, then steady. No I/O."""

from __future__ import annotations

from collections.abc import Iterator

BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)


def backoff_delay(attempt: int, steps: tuple[float, ...] = BACKOFF) -> float:
    """The wait after the `attempt`th failure in a row (1 for the first)."""
    return steps[min(max(attempt, 1), len(steps)) - 1]


def backoff_delays(steps: tuple[float, ...] = BACKOFF) -> Iterator[float]:
    """The waits after the first failure, the second, and so on, without end."""
    attempt = 0
    while True:
        attempt += 1
        yield backoff_delay(attempt, steps)
