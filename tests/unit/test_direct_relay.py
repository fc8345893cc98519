"""The direct load's relay on hand-built binary COPY messages (no database):
one row per message, side field stripped from loaded rows, side rows spooled
whole, and anything else refused with a clear error."""

from __future__ import annotations

import io
import struct
from datetime import datetime

import pytest

from include.migration.direct import HEADER, TRAILER, FramingError, Relayed, relay

FIELDS, CONTROL = 2, 3


def field(value: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if value is None else struct.pack(">i", len(value)) + value


def target_row(key: int, text: bytes) -> bytes:
    return struct.pack(">h", FIELDS) + field(struct.pack(">q", key)) + field(text)


def loaded(key: int, text: bytes, change_us: int) -> bytes:
    side = struct.pack(">q", change_us) + struct.pack(">h", FIELDS)
    return (struct.pack(">h", FIELDS + CONTROL + 1) + field(None) * CONTROL + field(side)
            + target_row(key, text)[2:])


def aside(key: int) -> bytes:
    return (struct.pack(">h", FIELDS + CONTROL + 1) + field(b"excluded") + field(b"soft_deleted") + field(None)
            + field(b"S") + target_row(key, b"x")[2:])


def run(messages: list[bytes]) -> tuple[Relayed, bytes, bytes]:
    into, spool = io.BytesIO(), io.BytesIO()
    result = relay(iter(messages), into, spool, FIELDS, CONTROL)
    return result, into.getvalue(), spool.getvalue()


def test_loaded_rows_lose_their_side_field_and_side_rows_are_spooled_whole():
    first = HEADER + loaded(1, b"a", 10)  # PostgreSQL sends the header with the first row
    result, into, spool = run([first, aside(2), loaded(3, b"ccc", 30), loaded(4, b"", 20), TRAILER])
    assert into == HEADER + target_row(1, b"a") + target_row(3, b"ccc") + target_row(4, b"") + TRAILER
    assert spool == HEADER + aside(2) + TRAILER
    assert (result.loaded, result.side) == (3, 1)
    assert result.max_change_ts == datetime(2000, 1, 1, 0, 0, 0, 30)


def test_a_stream_of_side_rows_only_and_an_empty_stream():
    result, into, spool = run([HEADER + aside(1), aside(2), TRAILER])
    assert into == HEADER + TRAILER and spool == HEADER + aside(1) + aside(2) + TRAILER
    assert result.max_change_ts is None
    result, into, spool = run([HEADER + TRAILER])
    assert (result.loaded, result.side, into, spool) == (0, 0, HEADER + TRAILER, HEADER + TRAILER)


def test_timestamps_before_2000_count_in_the_maximum():
    result, _, _ = run([HEADER + loaded(1, b"a", -5_000_000), loaded(2, b"b", -7_000_000), TRAILER])
    assert result.max_change_us == -5_000_000


@pytest.mark.parametrize("messages,error", [
    ([b"NOTCOPY" + b"\x00" * 20], "signature"),
    ([HEADER + loaded(1, b"a", 1)], "without its trailer"),
    ([HEADER + loaded(1, b"a", 1), TRAILER, loaded(2, b"b", 2)], "after the end"),
    ([HEADER + loaded(1, b"a", 1), struct.pack(">h", FIELDS) + b"junk", TRAILER], "not one row"),
])
def test_anything_but_one_row_per_message_is_refused(messages, error):
    with pytest.raises(FramingError, match=error):
        run(messages)
