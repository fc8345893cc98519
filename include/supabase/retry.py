"""The one retry-with-backoff of the Supabase side: Auth admin calls and Storage requests.

:func:`call_with_retry` runs an action; when it raises an error the caller's
``retryable`` predicate accepts (each caller knows which statuses pass: 429,
5xx, no answer), it waits an exponentially growing, jittered delay
(:class:`Backoff`) and runs it again, ``attempts`` times in all. Every retry
is logged with what failed, the attempt number and the wait; the last error,
or one that is not retryable, is raised unchanged.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Wait before retry ``n`` (0-based): ``min(cap, base * 2**n)``, scaled by a random factor
    in ``jitter`` so that concurrent workers do not retry in step."""

    base: float
    cap: float | None = None
    jitter: tuple[float, float] = (1.0, 1.0)

    def delay(self, retry: int) -> float:
        nominal = self.base * 2**retry
        if self.cap is not None:
            nominal = min(self.cap, nominal)
        low, high = self.jitter
        return nominal * random.uniform(low, high)


def call_with_retry(
    action: Callable[[], T],
    *,
    attempts: int,
    retryable: Callable[[Exception], bool],
    backoff: Backoff,
    what: str,
    describe: Callable[[Exception], str] = lambda err: f"{type(err).__name__}: {err}",
) -> T:
    """``action()``, tried at most ``attempts`` times (at least once) while it fails retryably.

    ``what`` names the action in the log (an object path, "create user <id>"),
    ``describe`` says what failed.
    """
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as err:
            if attempt == attempts or not retryable(err):
                raise
            wait = backoff.delay(attempt - 1)
            log.info(
                "%s: attempt %d of %d failed (%s); retrying in %.2f s",
                what,
                attempt,
                attempts,
                describe(err),
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")
