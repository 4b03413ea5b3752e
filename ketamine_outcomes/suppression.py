"""Small-cell suppression (outcomes.md "Disclosure control") and the mart catalog.

Pure functions on polars frames, applied to the marts *after* the statistics are computed and
*before* anything is written to the analyst-facing schema. Counts of 1 .. ``min_cell_size - 1``
are withheld (zero is allowed: a zero cell identifies nobody); the row stays, with
``suppressed = true``, so analysts see that the stratum exists.

Rules, in the order they are applied:

* **Primary, per measure** (response_rates): denominator ``n_patients`` small -> everything in
  the row NULL; responders or non-responders small -> the response columns NULL; remitters or
  non-remitters small -> the remission columns NULL. ``n_patients`` stays published when only
  a numerator was withheld.
* **Complementary, per dimension and measure**: when a measure is withheld in exactly one stratum
  of a dimension (site, route, sex, age_band) and the dimension's total (the ``overall`` row) is
  published for that measure, the same measure is withheld in the stratum with the
  next-smallest denominator (ties: the first ``stratum_value`` in sort order), so the small cell
  cannot be recovered by subtraction from the total. Only strata with a non-zero denominator
  are candidates (withholding an empty stratum hides nothing). When two or more strata already
  withhold the measure, nothing more is withheld. Measures: the denominator (whole row), the
  response columns, the remission columns; for time_to_response the whole row.
* **time_to_response**: a row with ``n_patients``, ``n_responders`` or ``n_censored`` small has
  every count and estimate NULL.
* **attrition**: counts 1-10 withheld (no complementary suppression: the marts publish no total
  of the reasons it could be subtracted from).
* **time_to_response_curve**: published only for indication x instrument whose overall
  time-to-response row is unsuppressed with at least ``min_cell_size`` patients, and only when
  ``publish_curves``; ``n_at_risk`` NULL once below ``min_cell_size``; no per-day event or
  censoring counts.
* **safety_events**: patient counts (``n_patients``, ``n_patients_with_event`` and its
  complement) small -> the patient counts, patient rate and its CI NULL; session, event and
  serious-event counts and events per 100 sessions stay published.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import yaml

MART_CATALOG_PATH = Path(__file__).resolve().parent / "mart_catalog.yaml"

#: Columns every mart carries (marts.md "Common columns").
COMMON_COLUMNS: tuple[str, ...] = ("definition_version", "run_id", "built_at")

OVERALL = "overall"
RESPONSE_COLUMNS: tuple[str, ...] = (
    "n_responders",
    "response_rate",
    "response_ci_low",
    "response_ci_high",
)
REMISSION_COLUMNS: tuple[str, ...] = (
    "n_remitters",
    "remission_rate",
    "remission_ci_low",
    "remission_ci_high",
)
RATE_KEYS: tuple[str, ...] = ("indication", "instrument", "endpoint", "population")
TTR_KEYS: tuple[str, ...] = ("indication", "instrument")
#: time_to_response columns that identify or describe a row; every other column is a count or
#: an estimate and is withheld when the row is suppressed (new columns are withheld by default).
TTR_IDENTITY_COLUMNS: frozenset[str] = frozenset(
    {"indication", "instrument", "stratum", "stratum_value", "population", "ci_method"}
    | {"suppressed", *COMMON_COLUMNS}
)
SAFETY_PATIENT_COLUMNS: tuple[str, ...] = (
    "n_patients",
    "n_patients_with_event",
    "patient_event_rate",
    "patient_event_ci_low",
    "patient_event_ci_high",
)
CURVE_COLUMNS: tuple[str, ...] = (
    "indication",
    "instrument",
    "day",
    "cum_response",
    "ci_low",
    "ci_high",
    "n_at_risk",
)


def is_small(count: pl.Expr, min_cell_size: int) -> pl.Expr:
    """True for a count of 1 .. min_cell_size - 1 (zero is allowed, NULL is not small)."""
    return ((count >= 1) & (count < min_cell_size)).fill_null(False)


def complementary_suppression(
    df: pl.DataFrame,
    withheld: str,
    group_keys: Sequence[str],
    denominator: str = "n_patients",
) -> pl.DataFrame:
    """Return ``df`` with the boolean column ``withheld`` extended by complementary suppression.

    Within each dimension (``group_keys`` + ``stratum``, the ``overall`` row excluded): when
    exactly one stratum withholds the measure and the ``overall`` row of ``group_keys``
    publishes it (a missing overall row counts as published: suppressing more is the safe
    side), the stratum with the smallest ``denominator`` among those that publish it with a
    non-zero denominator is withheld too, ties broken by ``stratum_value`` in sort order. Row
    order is preserved.
    """
    keys = list(group_keys)
    dimension = [*keys, "stratum"]
    indexed = df.with_row_index("_row")
    totals = indexed.filter(pl.col("stratum") == OVERALL).select(
        *keys, pl.col(withheld).alias("_total_withheld")
    )
    strata = (
        indexed.filter(pl.col("stratum") != OVERALL)
        .join(totals, on=keys, how="left", nulls_equal=True)
        .sort([*dimension, denominator, "stratum_value"], nulls_last=True)
    )
    candidate = ~pl.col(withheld) & (pl.col(denominator).fill_null(0) > 0)
    strata = strata.with_columns(
        _n_withheld=pl.col(withheld).cast(pl.Int64).sum().over(dimension),
        _candidate_rank=candidate.cast(pl.Int64).cum_sum().over(dimension),
    ).with_columns(
        (
            pl.col(withheld)
            | (
                (pl.col("_n_withheld") == 1)
                & ~pl.col("_total_withheld").fill_null(False)
                & candidate
                & (pl.col("_candidate_rank") == 1)
            )
        ).alias(withheld)
    )
    overall = indexed.filter(pl.col("stratum") == OVERALL)
    return (
        pl.concat([overall, strata.select(indexed.columns)], how="vertical")
        .sort("_row")
        .drop("_row")
    )


def _null_where(columns: Sequence[str], condition: str) -> list[pl.Expr]:
    return [pl.when(pl.col(condition)).then(None).otherwise(pl.col(c)).alias(c) for c in columns]


def suppress_response_rates(df: pl.DataFrame, min_cell_size: int) -> pl.DataFrame:
    """Apply primary and complementary suppression to ``response_rates`` rows.

    Expects the mart's key and count columns (``indication, instrument, endpoint, population,
    stratum, stratum_value, n_patients, n_responders, n_remitters`` and the rate/CI columns);
    returns the same columns with withheld values NULL and ``suppressed`` set.
    """
    n = pl.col("n_patients")
    flagged = df.with_columns(_w_patients=is_small(n, min_cell_size)).with_columns(
        _w_response=pl.col("_w_patients")
        | is_small(pl.col("n_responders"), min_cell_size)
        | is_small(n - pl.col("n_responders"), min_cell_size),
        _w_remission=pl.col("_w_patients")
        | is_small(pl.col("n_remitters"), min_cell_size)
        | is_small(n - pl.col("n_remitters"), min_cell_size),
    )
    # The denominator first: a complementary withheld denominator withholds the whole row,
    # which then counts as a withheld response and remission for their own complements.
    flagged = complementary_suppression(flagged, "_w_patients", RATE_KEYS)
    flagged = flagged.with_columns(
        _w_response=pl.col("_w_response") | pl.col("_w_patients"),
        _w_remission=pl.col("_w_remission") | pl.col("_w_patients"),
    )
    flagged = complementary_suppression(flagged, "_w_response", RATE_KEYS)
    flagged = complementary_suppression(flagged, "_w_remission", RATE_KEYS)
    previous = pl.col("suppressed").fill_null(False) if "suppressed" in df.columns else False
    return (
        flagged.with_columns(
            *_null_where(RESPONSE_COLUMNS, "_w_response"),
            *_null_where(REMISSION_COLUMNS, "_w_remission"),
            *_null_where(["n_patients"], "_w_patients"),
            suppressed=pl.col("_w_patients")
            | pl.col("_w_response")
            | pl.col("_w_remission")
            | previous,
        )
        .drop("_w_patients", "_w_response", "_w_remission")
        .select(_with_suppressed_last(df.columns))
    )


def suppress_time_to_response(df: pl.DataFrame, min_cell_size: int) -> pl.DataFrame:
    """Withhold every count and estimate of a ``time_to_response`` row with ``n_patients``,
    ``n_responders`` or ``n_censored`` in 1 .. min_cell_size - 1, plus complementary
    suppression of whole rows within each dimension."""
    flagged = df.with_columns(
        _withheld=is_small(pl.col("n_patients"), min_cell_size)
        | is_small(pl.col("n_responders"), min_cell_size)
        | is_small(pl.col("n_censored"), min_cell_size)
    )
    flagged = complementary_suppression(flagged, "_withheld", TTR_KEYS)
    withheld_columns = [c for c in df.columns if c not in TTR_IDENTITY_COLUMNS]
    previous = pl.col("suppressed").fill_null(False) if "suppressed" in df.columns else False
    return (
        flagged.with_columns(
            *_null_where(withheld_columns, "_withheld"),
            suppressed=pl.col("_withheld") | previous,
        )
        .drop("_withheld")
        .select(_with_suppressed_last(df.columns))
    )


def suppress_attrition(df: pl.DataFrame, min_cell_size: int) -> pl.DataFrame:
    """Withhold attrition counts of 1 .. min_cell_size - 1 (the row stays, suppressed)."""
    small = is_small(pl.col("n_patients"), min_cell_size)
    return df.with_columns(
        n_patients=pl.when(small).then(None).otherwise(pl.col("n_patients")),
        suppressed=small,
    ).select(_with_suppressed_last(df.columns))


def gate_curve(
    curve: pl.DataFrame,
    time_to_response: pl.DataFrame,
    min_cell_size: int,
    publish_curves: bool = True,
) -> pl.DataFrame:
    """The publishable Kaplan-Meier curve rows.

    ``time_to_response`` must already be suppressed (``suppress_time_to_response``): a curve is
    kept only for indication x instrument whose ``overall`` row is unsuppressed with
    ``n_patients >= min_cell_size``. ``n_at_risk`` becomes NULL below ``min_cell_size``. Only
    ``CURVE_COLUMNS`` (and common columns) are kept, so per-day event or censoring counts can
    never leak. ``publish_curves = False`` returns no rows.
    """
    keep = [c for c in curve.columns if c in CURVE_COLUMNS or c in COMMON_COLUMNS]
    if not publish_curves:
        return curve.select(keep).clear()
    published = time_to_response.filter(
        (pl.col("stratum") == OVERALL)
        & ~pl.col("suppressed").fill_null(True)
        & (pl.col("n_patients").fill_null(0) >= min_cell_size)
    ).select(TTR_KEYS)
    return (
        curve.join(published, on=list(TTR_KEYS), how="semi", nulls_equal=True)
        .with_columns(
            n_at_risk=pl.when(pl.col("n_at_risk") < min_cell_size)
            .then(None)
            .otherwise(pl.col("n_at_risk"))
        )
        .select(keep)
    )


def suppress_safety_events(df: pl.DataFrame, min_cell_size: int) -> pl.DataFrame:
    """Withhold a safety row's patient counts, patient rate and CI when ``n_patients``,
    ``n_patients_with_event`` or its complement is 1 .. min_cell_size - 1; session, event and
    serious-event counts and events per 100 sessions stay published."""
    flagged = df.with_columns(
        _withheld=is_small(pl.col("n_patients"), min_cell_size)
        | is_small(pl.col("n_patients_with_event"), min_cell_size)
        | is_small(pl.col("n_patients") - pl.col("n_patients_with_event"), min_cell_size)
    )
    columns = [c for c in SAFETY_PATIENT_COLUMNS if c in df.columns]
    previous = pl.col("suppressed").fill_null(False) if "suppressed" in df.columns else False
    return (
        flagged.with_columns(
            *_null_where(columns, "_withheld"), suppressed=pl.col("_withheld") | previous
        )
        .drop("_withheld")
        .select(_with_suppressed_last(df.columns))
    )


def _with_suppressed_last(columns: Sequence[str]) -> list[str]:
    """Keep the input column order; add ``suppressed`` at the end if it was not there."""
    return [*columns] if "suppressed" in columns else [*columns, "suppressed"]


@cache
def _catalog() -> dict[str, Any]:
    with open(MART_CATALOG_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def mart_descriptions() -> dict[str, dict[str, Any]]:
    """One-sentence descriptions of every mart and every column, for ``COMMENT ON``.

    Returns ``{table: {"description": str, "columns": {column: str}}}`` for all marts of
    marts.md; the common columns (definition_version, run_id, built_at) are included in each
    table's columns. Source: ``mart_catalog.yaml``.
    """
    catalog = _catalog()
    common: dict[str, str] = catalog["common_columns"]
    return {
        table: {
            "description": spec["description"],
            "columns": {**spec["columns"], **common},
        }
        for table, spec in catalog["marts"].items()
    }
