"""Small-cell suppression (outcomes.md "Disclosure control") on hand-made mart frames."""

from __future__ import annotations

import re
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketamine_outcomes.suppression import (
    COMMON_COLUMNS,
    gate_curve,
    mart_descriptions,
    suppress_attrition,
    suppress_response_rates,
    suppress_safety_events,
    suppress_time_to_response,
)
from tests.outcome_cohorts import MARTS_MD_COLUMNS

MIN = 11


def rate_rows(*strata: tuple[str, str, int, int, int]) -> pl.DataFrame:
    """response_rates rows of one indication x instrument x endpoint x population:
    (stratum, stratum_value, n_patients, n_responders, n_remitters); rates filled in."""
    rows: list[dict[str, Any]] = []
    for stratum, value, n, k, r in strata:
        rows.append(
            {
                "indication": "MDD",
                "instrument": "MADRS",
                "endpoint": "end_of_induction",
                "population": "ITT",
                "stratum": stratum,
                "stratum_value": value,
                "n_patients": n,
                "n_responders": k,
                "response_rate": k / n if n else None,
                "response_ci_low": 0.0,
                "response_ci_high": 1.0,
                "n_remitters": r,
                "remission_rate": r / n if n else None,
                "remission_ci_low": 0.0,
                "remission_ci_high": 1.0,
                "response_definition": ">= 50 % reduction in MADRS",
                "remission_definition": "MADRS <= 10",
                "ci_method": "wilson",
                "suppressed": False,
            }
        )
    return pl.DataFrame(rows)


def by_value(frame: pl.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["stratum"], r["stratum_value"]): r for r in frame.iter_rows(named=True)}


def withheld(row: dict[str, Any], measure: str) -> bool:
    """Whether a measure (response / remission) is withheld; it is withheld as a whole."""
    count = {"response": "n_responders", "remission": "n_remitters"}[measure]
    columns = (f"{measure}_rate", f"{measure}_ci_low", f"{measure}_ci_high")
    if row[count] is None:
        assert all(row[c] is None for c in columns), row
        return True
    return False


def response_withheld(row: dict[str, Any]) -> bool:
    return withheld(row, "response")


def remission_withheld(row: dict[str, Any]) -> bool:
    return withheld(row, "remission")


def test_numerator_and_complement_of_1_to_10_are_withheld_per_measure():
    out = by_value(
        suppress_response_rates(
            rate_rows(
                ("overall", "all", 100, 50, 40),
                ("sex", "F", 30, 10, 15),  # responders 10 -> response withheld
                ("sex", "M", 30, 11, 15),  # 11 published (boundary)
                ("sex", "X", 25, 15, 20),  # non-responders 10, non-remitters 5
                ("sex", "U", 15, 14, 0),  # complement 1 withheld; 0 remitters published
            ),
            MIN,
        )
    )
    # F: responders 10 withheld, remission (15 of 30; 15 not) published, n_patients stays
    assert response_withheld(out[("sex", "F")]) and not remission_withheld(out[("sex", "F")])
    assert out[("sex", "F")]["n_patients"] == 30 and out[("sex", "F")]["suppressed"]
    assert not response_withheld(out[("sex", "M")])
    assert response_withheld(out[("sex", "X")]) and remission_withheld(out[("sex", "X")])
    assert response_withheld(out[("sex", "U")])
    assert not out[("overall", "all")]["suppressed"]
    # response withheld in 3 strata already: no complementary suppression of M
    assert not out[("sex", "M")]["suppressed"]
    # remission is withheld in X alone: complementary suppression of the next-smallest other
    # denominator, U (15 < 30), although U's own 0 remitters would be publishable
    assert remission_withheld(out[("sex", "U")])


def test_small_denominator_withholds_everything_zero_is_allowed():
    out = by_value(
        suppress_response_rates(
            rate_rows(
                ("overall", "all", 10, 5, 5),
                ("site", "A", 10, 5, 5),
                ("site", "B", 0, 0, 0),
            ),
            MIN,
        )
    )
    small = out[("overall", "all")]
    assert small["n_patients"] is None and small["suppressed"]
    assert response_withheld(small) and remission_withheld(small)
    assert small["indication"] == "MDD" and small["response_definition"]  # identity stays
    empty = out[("site", "B")]
    assert (empty["n_patients"], empty["n_responders"], empty["suppressed"]) == (0, 0, False)
    # A (10) is withheld; the total is withheld too, and B has no patients: nothing more
    assert out[("site", "A")]["n_patients"] is None


def test_complementary_suppression_next_smallest_denominator_ties_by_sort_order():
    # response withheld only in A (5 responders). Next-smallest denominator among the others:
    # C and D tie at 30 -> the first stratum_value in sort order, C. B (40) and E (0 patients,
    # nothing to hide) stay. Remission is published everywhere: not touched.
    out = by_value(
        suppress_response_rates(
            rate_rows(
                ("overall", "all", 150, 52, 75),
                ("site", "A", 50, 5, 25),
                ("site", "D", 30, 12, 15),
                ("site", "C", 30, 15, 15),
                ("site", "B", 40, 20, 20),
                ("site", "E", 0, 0, 0),
            ),
            MIN,
        )
    )
    assert response_withheld(out[("site", "A")])
    assert response_withheld(out[("site", "C")]) and out[("site", "C")]["suppressed"]
    assert out[("site", "C")]["n_patients"] == 30
    for value in ("B", "D", "E"):
        assert not out[("site", value)]["suppressed"], value
    assert not any(remission_withheld(row) for row in out.values())


def test_complementary_suppression_is_per_dimension_and_per_measure():
    out = by_value(
        suppress_response_rates(
            rate_rows(
                ("overall", "all", 100, 50, 40),
                ("site", "A", 20, 3, 0),  # response withheld (0 remitters is publishable)
                ("site", "B", 80, 47, 40),  # -> response complement (only candidate)
                ("sex", "F", 40, 20, 5),  # remission withheld
                ("sex", "M", 60, 30, 35),  # -> remission complement
            ),
            MIN,
        )
    )
    assert response_withheld(out[("site", "B")]) and not remission_withheld(out[("site", "B")])
    assert remission_withheld(out[("sex", "M")]) and not response_withheld(out[("sex", "M")])
    assert not response_withheld(out[("sex", "F")])


def test_no_complement_when_two_strata_withhold_or_the_total_is_withheld():
    two = by_value(
        suppress_response_rates(
            rate_rows(
                ("overall", "all", 100, 50, 50),
                ("age_band", "18-24", 20, 4, 10),
                ("age_band", "25-34", 20, 6, 10),
                ("age_band", "35-44", 60, 40, 30),
            ),
            MIN,
        )
    )
    assert not two[("age_band", "35-44")]["suppressed"]
    # overall responders 5: the total itself is withheld, nothing to subtract from
    total = by_value(
        suppress_response_rates(
            rate_rows(
                ("overall", "all", 100, 5, 50),
                ("route", "IV", 50, 5, 25),
                ("route", "IN", 50, 0, 25),
            ),
            MIN,
        )
    )
    assert response_withheld(total[("overall", "all")])
    assert response_withheld(total[("route", "IV")])
    assert not total[("route", "IN")]["suppressed"]


def test_complementary_suppression_of_a_denominator_withholds_the_whole_row():
    # site A has 5 patients (all withheld); the overall 60 is published, so B (the smallest
    # other denominator, 15) is withheld entirely; C stays. A and B then both withhold the
    # response and the remission: no further complement.
    out = by_value(
        suppress_response_rates(
            rate_rows(
                ("overall", "all", 60, 30, 30),
                ("site", "A", 5, 2, 2),
                ("site", "B", 15, 0, 0),
                ("site", "C", 40, 28, 28),
            ),
            MIN,
        )
    )
    for value in ("A", "B"):
        row = out[("site", value)]
        assert row["n_patients"] is None and response_withheld(row) and remission_withheld(row)
    assert not out[("site", "C")]["suppressed"]


def test_groups_are_independent():
    itt = rate_rows(("overall", "all", 100, 50, 50), ("sex", "F", 20, 5, 10))
    # evaluable: 20 of 20 respond and none remit in F (complements 0): nothing withheld
    evaluable = itt.with_columns(
        population=pl.lit("evaluable"),
        n_responders=pl.lit(20, dtype=pl.Int64),
        n_remitters=pl.lit(0, dtype=pl.Int64),
    )
    out = suppress_response_rates(pl.concat([itt, evaluable]), MIN)
    flags = out.select("population", "stratum", "suppressed").rows()
    assert flags == [
        ("ITT", "overall", False),
        ("ITT", "sex", True),
        ("evaluable", "overall", False),
        ("evaluable", "sex", False),
    ]


def test_min_cell_size_is_configurable():
    rows = rate_rows(("overall", "all", 100, 50, 50), ("sex", "F", 50, 5, 25))
    assert not suppress_response_rates(rows, 5)["suppressed"].any()
    assert suppress_response_rates(rows, 6)["suppressed"].to_list() == [False, True]


def ttr_rows(*strata: tuple[str, str, int, int]) -> pl.DataFrame:
    rows = []
    for stratum, value, n, k in strata:
        rows.append(
            {
                "indication": "CRPS",
                "instrument": "NRS_PAIN",
                "stratum": stratum,
                "stratum_value": value,
                "n_patients": n,
                "n_responders": k,
                "n_censored": n - k,
                "median_days": 14.0,
                "median_ci_low": 7.0,
                "median_ci_high": 21.0,
                "cum_response_d28": 0.6,
                "max_followup_day": 84,
                "responders_median_days": 12.0,
                "responders_median_sessions": 4.0,
                "ci_method": "log-log",
                "suppressed": False,
            }
        )
    return pl.DataFrame(rows)


def test_suppressed_time_to_response_row_has_all_counts_and_estimates_null():
    out = by_value(
        suppress_time_to_response(
            ttr_rows(
                ("overall", "all", 100, 60),
                ("site", "A", 40, 37),  # 3 censored -> withheld
                ("site", "B", 25, 12),  # smallest other denominator -> complement
                ("site", "C", 35, 11),
                ("sex", "F", 100, 60),
            ),
            MIN,
        )
    )
    identity = {"indication", "instrument", "stratum", "stratum_value", "ci_method", "suppressed"}
    for value in ("A", "B"):
        row = out[("site", value)]
        assert row["suppressed"]
        assert all(v is None for c, v in row.items() if c not in identity), row
        assert row["ci_method"] == "log-log"
    assert not out[("site", "C")]["suppressed"] and out[("site", "C")]["n_censored"] == 24
    assert not out[("overall", "all")]["suppressed"]


def test_time_to_response_with_zero_patients_is_published():
    out = suppress_time_to_response(ttr_rows(("overall", "all", 0, 0)), MIN)
    assert out["suppressed"].to_list() == [False]


def test_attrition_counts_are_withheld():
    frame = pl.DataFrame(
        {
            "indication": ["MDD", "MDD", "MDD"],
            "instrument": ["MADRS"] * 3,
            "analysis": ["ever"] * 3,
            "reason": ["no_baseline", "baseline_zero", "no_followup_in_window"],
            "n_patients": [10, 1, 11],
        }
    )
    out = suppress_attrition(frame, MIN)
    assert out["n_patients"].to_list() == [None, None, 11]
    assert out["suppressed"].to_list() == [True, True, False]
    assert out.columns == [*frame.columns, "suppressed"]


def curve_rows() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "indication": ["MDD"] * 3 + ["GAD"] * 2 + ["SAD"],
            "instrument": ["MADRS"] * 3 + ["GAD7"] * 2 + ["LSAS"],
            "day": [7, 14, 28, 7, 14, 7],
            "cum_response": [0.1, 0.3, 0.5, 0.2, 0.4, 0.1],
            "ci_low": [0.05, 0.2, 0.4, 0.1, 0.3, 0.0],
            "ci_high": [0.2, 0.4, 0.6, 0.3, 0.5, 0.2],
            "n_at_risk": [30, 11, 10, 40, 20, 12],
            "n_events": [3, 6, 2, 8, 8, 1],  # never published
        }
    )


def curve_ttr() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "indication": ["MDD", "MDD", "GAD", "SAD"],
            "instrument": ["MADRS", "MADRS", "GAD7", "LSAS"],
            "stratum": ["overall", "site", "overall", "overall"],
            "stratum_value": ["all", "A", "all", "all"],
            "n_patients": [30, None, None, 12],
            "suppressed": [False, True, True, False],
        }
    )


def test_curve_only_for_unsuppressed_overall_rows_and_at_risk_withheld_below_min():
    out = gate_curve(curve_rows(), curve_ttr(), MIN, publish_curves=True)
    assert "n_events" not in out.columns and "n_censored" not in out.columns
    assert out.select("indication", "day", "n_at_risk").rows() == [
        ("MDD", 7, 30),
        ("MDD", 14, 11),
        ("MDD", 28, None),  # 10 at risk < 11
        ("SAD", 7, 12),
    ]


def test_curves_can_be_turned_off():
    out = gate_curve(curve_rows(), curve_ttr(), MIN, publish_curves=False)
    assert out.height == 0 and "cum_response" in out.columns


def test_safety_patient_counts_withheld_session_counts_stay():
    frame = pl.DataFrame(
        {
            "indication": ["MDD", "MDD", "MDD"],
            "route": ["IV"] * 3,
            "dose_band": ["<=0.5"] * 3,
            "event": ["NAUSEA_VOMITING", "DISSOCIATION", "HEADACHE"],
            "n_sessions": [200, 200, 200],
            "n_events": [4, 60, 30],
            "events_per_100_sessions": [2.0, 30.0, 15.0],
            "n_patients": [40, 40, 40],
            "n_patients_with_event": [3, 35, 20],
            "patient_event_rate": [0.075, 0.875, 0.5],
            "patient_event_ci_low": [0.02, 0.7, 0.3],
            "patient_event_ci_high": [0.2, 0.95, 0.7],
            "n_serious": [0, 1, 0],
        }
    )
    out = suppress_safety_events(frame, MIN).rows(named=True)
    # 3 patients with the event; 40 - 35 = 5 without it: both withheld; 20 / 20 published
    for row in out[:2]:
        assert row["suppressed"]
        assert row["n_patients"] is None and row["n_patients_with_event"] is None
        assert row["patient_event_rate"] is None and row["patient_event_ci_low"] is None
        assert row["n_sessions"] == 200 and row["n_events"] is not None
        assert row["n_serious"] is not None and row["events_per_100_sessions"] is not None
    assert not out[2]["suppressed"] and out[2]["n_patients_with_event"] == 20


@pytest.mark.parametrize("table", sorted(MARTS_MD_COLUMNS))
def test_catalog_describes_every_mart_and_column(table: str):
    catalog = mart_descriptions()
    assert set(catalog) == set(MARTS_MD_COLUMNS)
    entry = catalog[table]
    expected = set(MARTS_MD_COLUMNS[table].split()) | set(COMMON_COLUMNS)
    # marts.md allows added columns; every marts.md column must be described
    assert expected <= set(entry["columns"])
    for text in [entry["description"], *entry["columns"].values()]:
        assert isinstance(text, str) and text.strip() and "\n" not in text
        # one sentence: ends with a period, no sentence break inside (e.g. "1 - S(t)." only)
        assert text.endswith("."), text
        assert not re.search(r"\.\s+[A-Z]", text), text


@st.composite
def dimension(draw: st.DrawFn) -> pl.DataFrame:
    """An overall row and 1-5 strata of one dimension with consistent random counts."""
    strata = []
    for value in "ABCDE"[: draw(st.integers(1, 5))]:
        n = draw(st.integers(0, 40))
        k = draw(st.integers(0, n))
        r = draw(st.integers(0, n))
        strata.append(("site", value, n, k, r))
    totals = [sum(s[i] for s in strata) for i in (2, 3, 4)]
    return rate_rows(("overall", "all", *totals), *strata)


@settings(max_examples=300, deadline=None)
@given(dimension())
def test_no_small_cell_survives_and_no_single_withheld_stratum(frame: pl.DataFrame):
    """Invariants for any input: no published count or complement in 1-10; within the
    dimension a measure published in the total is withheld in 0 or >= 2 strata (unless no
    other stratum has patients to hide it among)."""
    out = suppress_response_rates(frame, MIN)
    rows = out.to_dicts()
    for row, original in zip(rows, frame.to_dicts(), strict=True):
        n = row["n_patients"]
        assert n is None or not 1 <= n <= 10
        for count in ("n_responders", "n_remitters"):
            if row[count] is not None:
                assert n is not None
                assert not 1 <= row[count] <= 10 and not 1 <= n - row[count] <= 10
        assert row["suppressed"] == any(
            row[c] != original[c] for c in ("n_patients", "n_responders", "n_remitters")
        )
    overall, strata = rows[0], rows[1:]
    originals = frame.to_dicts()[1:]
    for measure in ("n_patients", "n_responders", "n_remitters"):
        withheld_idx = [i for i, s in enumerate(strata) if s[measure] is None]
        if len(withheld_idx) == 1 and overall[measure] is not None:
            others = [o for i, o in enumerate(originals) if i != withheld_idx[0]]
            assert all(o["n_patients"] == 0 for o in others), (measure, rows)
