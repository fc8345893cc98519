"""The one retry with backoff of the Supabase side (``include/supabase/retry.py``)."""

from __future__ import annotations

import logging

import pytest

from include.supabase.retry import Backoff, call_with_retry

NO_WAIT = Backoff(0.0)


class Passing(Exception):
    """Worth another try."""


class Final(Exception):
    """Not worth another try."""


def flaky(failures: list[Exception], result: str = "done"):
    """An action that raises the given errors in turn, then returns ``result``; counts its calls."""
    calls = []

    def action() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return action, calls


def test_a_passing_failure_is_retried_until_it_works_and_each_retry_is_logged(caplog) -> None:
    action, calls = flaky([Passing("503"), Passing("timeout")])
    with caplog.at_level(logging.INFO, logger="include.supabase.retry"):
        got = call_with_retry(
            action,
            attempts=5,
            retryable=lambda e: isinstance(e, Passing),
            backoff=NO_WAIT,
            what="upload a/b.png",
        )
    assert got == "done"
    assert calls == [1, 2, 3]
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2
    assert "upload a/b.png: attempt 1 of 5 failed (Passing: 503)" in retries[0]
    assert "upload a/b.png: attempt 2 of 5 failed (Passing: timeout)" in retries[1]


def test_the_last_error_comes_out_after_the_last_attempt() -> None:
    action, calls = flaky([Passing("1"), Passing("2"), Passing("3")])
    with pytest.raises(Passing, match="3"):
        call_with_retry(action, attempts=3, retryable=lambda e: True, backoff=NO_WAIT, what="x")
    assert calls == [1, 2, 3]


def test_a_final_failure_is_not_retried() -> None:
    action, calls = flaky([Final("409 exists")])
    with pytest.raises(Final):
        call_with_retry(
            action, attempts=4, retryable=lambda e: isinstance(e, Passing), backoff=NO_WAIT, what="x"
        )
    assert calls == [1]


def test_zero_attempts_still_tries_once() -> None:
    action, calls = flaky([])
    assert call_with_retry(action, attempts=0, retryable=lambda e: True, backoff=NO_WAIT, what="x") == "done"
    assert calls == [1]


def test_backoff_doubles_within_its_jitter_and_stops_at_its_cap() -> None:
    below = Backoff(0.25, cap=8.0, jitter=(0.5, 1.0))  # the Auth admin calls' shape
    above = Backoff(0.5, jitter=(1.0, 1.5))  # the Storage requests' shape
    for retry in range(8):
        assert 0.5 * min(8.0, 0.25 * 2**retry) <= below.delay(retry) <= min(8.0, 0.25 * 2**retry)
        assert 0.5 * 2**retry <= above.delay(retry) <= 1.5 * 0.5 * 2**retry
    assert below.delay(20) <= 8.0
    assert Backoff(0.5).delay(3) == 4.0
