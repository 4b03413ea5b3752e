"""Row rules on distinct values give exactly the rows that row-by-row validation gives.

The oracle is the same GX suite run over every row (how validation worked before, and the
plain reading of exports.md); the distinct-value path must flag the same (row, rule) pairs,
and the per-rule counts of ``element_count``/``unexpected_count`` must keep the "every
non-null value fails" property the column-type-throughout rule relies on.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import data_contracts
from ketamine_outcomes import expectations as ex
from ketamine_outcomes.distinct_values import (
    distinct_frame,
    distinct_per_column,
    failing_rows,
    value_groups,
)
from ketamine_outcomes.gx_runner import ROW_RESULT_FORMAT, GxSession
from ketamine_outcomes.validation import POSITION, _with_helper_columns

ROWS = 4_000

VALUES = {
    "patient_id": ["PT000001", "PT000002", "PT000003", "bad id!", None, "PT000009"],
    "instrument": ["MADRS", "PHQ9", "NRS_PAIN", "GAD7", "HAMD", None],
    "day": ["0", "7", "14", "-91", "731", "7.5", "x", None, "28"],
    "score": ["12", "30.0", "61", "4.5", "4.55", "-1", "abc", None, "10", "27"],
    "session_number": ["1", "2", "3", "0", "x", None, "4"],
    "route": ["IV", "IM", "iv", None, "IN"],
    "dose_mg": ["35", "0", "5000.5", "abc", None, "50.25"],
    "dose_mg_per_kg": [None, "0.5", "41", "0.75"],
    "duration_min": [None, "40", "0", "1441", "2.5"],
}
KNOWN = pl.Series(["PT000001", "PT000002", "PT000003"])


def _frame(table: str, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    contract = data_contracts.table_contract(table)
    data = {c: [VALUES[c][i] for i in rng.integers(0, len(VALUES[c]), ROWS)]
            for c in contract.column_names}
    return pl.DataFrame(data, schema={c: pl.String for c in contract.column_names})


def _pairs_row_by_row(gx: GxSession, table: str, frame: pl.DataFrame,
                      rules: list[ex.Rule]) -> set[tuple[int, str]]:
    results = gx.validate(f"{table}.oracle", frame.drop(POSITION), rules, ROW_RESULT_FORMAT)
    return {(p, r.rule.rule_id) for r in results for p in (r.unexpected_positions or [])}


@pytest.mark.parametrize(("table", "seed"), [("assessments", 1), ("assessments", 2),
                                             ("treatments", 3), ("treatments", 4)])
def test_distinct_values_flag_the_same_rows_as_row_by_row(table, seed):
    contract = data_contracts.table_contract(table)
    frame = _frame(table, seed).with_row_index(POSITION).with_columns(
        pl.col(POSITION).cast(pl.Int64))
    frame = _with_helper_columns(contract, frame, KNOWN)
    rules = ex.row_rules(contract, contract.column_names)
    gx = GxSession()
    expected = _pairs_row_by_row(gx, table, frame, rules)

    groups = value_groups(rules)
    distinct = distinct_frame(frame, groups)
    assert distinct.height < frame.height / 10  # the point of it
    results = gx.validate(f"{table}.distinct", distinct, rules, ROW_RESULT_FORMAT)
    got = failing_rows(frame, POSITION, groups,
                       {r.rule.rule_id: r.unexpected_positions or [] for r in results})
    assert set(got.iter_rows()) == expected
    assert got.height == len(expected)  # no pair twice
    assert {rule for _, rule in expected} >= {"patient_id.orphan", "patient_id.pattern",
                                              "day.range", "day.type"}


def test_rules_reading_a_common_column_share_a_group():
    contract = data_contracts.table_contract("assessments")
    groups = value_groups(ex.row_rules(contract, contract.column_names))
    by_rule = {r.rule_id: set(g.columns) for g in groups for r in g.rules}
    assert by_rule["score.range[MADRS]"] == by_rule["instrument.enum"] == {
        "instrument", "score", "score__num"}
    assert by_rule["day.range"] == {"day", "day__num"}
    assert by_rule["patient_id.orphan"] == {"patient_id__known"}
    assert sum(len(g.rules) for g in groups) == len(ex.row_rules(contract,
                                                                 contract.column_names))


def test_type_throughout_property_survives_padding():
    """A column whose every non-null value fails keeps unexpected == non-null in the padded
    frame; one valid value breaks it there as on the rows."""
    contract = data_contracts.table_contract("treatments")
    base = _frame("treatments", 5).with_columns(
        pl.when(pl.int_range(pl.len()) % 3 == 0).then(None).otherwise(pl.lit("n/a"))
        .alias("duration_min"))
    gx = GxSession()
    for n, (frame, all_fail) in enumerate(((base, True),
                            (base.with_columns(pl.when(pl.int_range(pl.len()) == 5)
                                               .then(pl.lit("40")).otherwise("duration_min")
                                               .alias("duration_min")), False))):
        frame = _with_helper_columns(contract, frame.with_row_index(POSITION), KNOWN)
        rules = [r for r in ex.row_rules(contract, contract.column_names)
                 if r.rule_id == "duration_min.type"]
        groups = value_groups(ex.row_rules(contract, contract.column_names))
        (res,) = gx.validate(f"treatments.padding{n}", distinct_frame(frame, groups), rules,
                             ROW_RESULT_FORMAT)
        assert (res.unexpected_count == res.element_count - res.missing_count) is all_fail


def test_distinct_per_column_pads_with_nulls_only():
    frame = pl.DataFrame({"a": ["x", "x", "y", None], "b": ["1", "1", "1", "1"]})
    out = distinct_per_column(frame)
    assert out.height == 3
    assert out["a"].to_list() == ["x", "y", None]
    assert out["b"].to_list() == ["1", None, None]
