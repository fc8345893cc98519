"""The key ranges a full run stages (include/migration/changes.py) go into SQL as the sorted
edges of half-open ranges, tested per row with width_bucket (extract.in_ranges)."""

from __future__ import annotations

from include.migration.entities import get
from include.migration.extract import _edges, in_ranges


def test_touching_and_overlapping_ranges_merge_into_ascending_edges():
    messages = get("messages")
    ranges = [["5", "5"], ["1", "3"], ["4", "4"], ["10", "20"], ["12", "14"]]
    assert _edges(messages, ranges) == ["1", "6", "10", "21"]
    assert _edges(messages, [["-5", "-5"]]) == ["-5", "-4"]


def test_a_range_at_the_end_of_the_key_space_stays_open():
    agents = get("agents")
    edges = _edges(agents, [["ffffffff-ffff-ffff-ffff-fffffffffff0", "ffffffff-ffff-ffff-ffff-ffffffffffff"],
                            ["abc00000000000000000000000000000", "abcfffffffffffffffffffffffffffff"]])
    assert edges == ["abc00000000000000000000000000000", "abd00000000000000000000000000000",
                     "fffffffffffffffffffffffffffffff0"]
    assert _edges(get("messages"), [["9223372036854775807", "9223372036854775807"]]) == ["9223372036854775807"]


def test_no_range_matches_no_row():
    assert in_ranges(get("messages"), None, []).as_string(None) == "FALSE"  # type: ignore[arg-type]
