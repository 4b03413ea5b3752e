"""The session-order helper flag (``session_number.order``) against a row-by-row oracle."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import data_contracts
from ketamine_outcomes.validation import _with_order_flag

# the ordering rule of data_contracts/treatments.yaml (session_number by day within patient)
ORDERED = data_contracts.table_contract("treatments").ordered


def _oracle(frame: pl.DataFrame) -> list[bool]:
    """For each row: its number exceeds every valid number of the same patient on a strictly
    earlier valid day (rows without a patient or with an invalid day or number are not
    judged)."""
    parsed = frame.select(pl.col("patient_id"), pl.col("day").cast(pl.Int64, strict=False),
                          pl.col("session_number").cast(pl.Int64, strict=False)).rows()
    out = []
    for pid, day, num in parsed:
        if pid is None or day is None or num is None:
            out.append(True)
            continue
        earlier = [n for p, d, n in parsed if p == pid and d is not None and n is not None
                   and d < day]
        out.append(not earlier or num > max(earlier))
    return out


def test_hand_derived_cases():
    frame = pl.DataFrame({
        "patient_id": ["A", "A", "A", "A", "B", "B", "A"],
        "day": ["0", "0", "7", "14", "3", None, "x"],
        "session_number": ["1", "2", "2", "5", "9", "1", "1"],
    })
    flags = _with_order_flag(frame, ORDERED)["session_number__in_order"].to_list()
    # day 7 repeats session 2 of day 0 -> out of order; same day is not compared; invalid
    # day/number rows are not judged and do not count as earlier
    assert flags == [True, True, False, True, True, True, True]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_row_by_row_oracle(seed):
    rng = np.random.default_rng(seed)
    n = 600
    days = rng.choice(["0", "1", "7", "14", "28", "-3", "x", None, "2.5"], n).tolist()
    frame = pl.DataFrame({
        "patient_id": rng.choice(["P1", "P2", "P3", "P4", None], n).tolist(),
        "day": days,
        "session_number": rng.choice(["1", "2", "3", "4", "10", "0", "y", None], n).tolist(),
    }, schema={c: pl.String for c in ("patient_id", "day", "session_number")})
    got = _with_order_flag(frame, ORDERED)["session_number__in_order"].to_list()
    expected = _oracle(frame)
    assert got == expected
    assert not all(expected)  # the data exercises the rule
