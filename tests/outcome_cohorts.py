"""Hand-derivable cohorts written directly as the staging interface, in a real DuckDB file.

Tests describe patients in a few lines (administration days, scores by day) and derive the
expected numbers by hand in comments; ``Cohort.connect`` writes the staging tables with exactly
the types of the staging interface (``score`` is ``DECIMAL(6,1)``, inserted from strings so
that 4.9 stays exactly 4.9).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

import data_contracts
from ketamine_outcomes.derivation import derive_patient_outcomes
from ketamine_outcomes.outcome_definitions import OutcomeDefinitions

STAGING_DDL = """
CREATE SCHEMA IF NOT EXISTS staging;
CREATE OR REPLACE TABLE staging.current_patients (
    patient_id VARCHAR, site_id VARCHAR, indication VARCHAR, sex VARCHAR, age_band VARCHAR);
CREATE OR REPLACE TABLE staging.current_treatments (
    patient_id VARCHAR, day INTEGER, session_number INTEGER, route VARCHAR, dose_mg DOUBLE,
    dose_mg_per_kg DOUBLE, duration_min INTEGER);
CREATE OR REPLACE TABLE staging.current_assessments (
    patient_id VARCHAR, instrument VARCHAR, day INTEGER, score DECIMAL(6,1));
CREATE OR REPLACE TABLE staging.current_adverse_events (
    patient_id VARCHAR, day INTEGER, event VARCHAR, severity VARCHAR, serious BOOLEAN);
CREATE OR REPLACE TABLE staging.quarantined_patients (patient_id VARCHAR, indication VARCHAR);
"""


@dataclass
class Cohort:
    """Rows of the five staging tables, added patient by patient."""

    patients: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    treatments: list[tuple[str, int, int, str, float | None, float | None, int | None]] = field(
        default_factory=list
    )
    assessments: list[tuple[str, str, int, str]] = field(default_factory=list)
    quarantined: list[tuple[str, str | None]] = field(default_factory=list)

    def patient(
        self,
        patient_id: str,
        indication: str = "MDD",
        *,
        site_id: str = "S1",
        sex: str = "F",
        age_band: str = "35-44",
        sessions: Iterable[int] = (0,),
        route: str | Mapping[int, str] = "IV",
        scores: Mapping[int, str | int | float] | None = None,
        instrument: str | None = None,
    ) -> str:
        """Add a patient with administrations on ``sessions`` days (session numbers 1, 2, ...
        in order of day) and ``scores`` (day -> score) of ``instrument`` (default: the primary
        instrument of ``indication`` in v1)."""
        self.patients.append((patient_id, site_id, indication, sex, age_band))
        for number, day in enumerate(sorted(sessions), start=1):
            this_route = route if isinstance(route, str) else route[day]
            self.treatments.append((patient_id, day, number, this_route, 35.0, 0.5, 40))
        if scores:
            self.rate(patient_id, instrument or PRIMARY[indication], scores)
        return patient_id

    def rate(
        self, patient_id: str, instrument: str, scores: Mapping[int, str | int | float]
    ) -> None:
        """Add assessments of ``instrument``: day -> score (written as exact decimals)."""
        for day, score in scores.items():
            self.assessments.append((patient_id, instrument, day, str(score)))

    def treatment(self, patient_id: str, day: int, session_number: int, route: str = "IV") -> None:
        self.treatments.append((patient_id, day, session_number, route, 35.0, 0.5, 40))

    def quarantine(self, patient_id: str, indication: str | None) -> None:
        self.quarantined.append((patient_id, indication))

    def connect(self, path: Path) -> duckdb.DuckDBPyConnection:
        """Write the staging tables into a fresh DuckDB file at ``path`` and return a
        read-write connection to it (bulk inserts from polars frames: row-by-row inserts take
        seconds for a few hundred patients)."""
        con = duckdb.connect(str(path))
        con.execute(STAGING_DDL)
        tables = {
            "current_patients": (self.patients, _PATIENT_COLUMNS, "*"),
            "current_treatments": (self.treatments, _TREATMENT_COLUMNS, "*"),
            "current_assessments": (
                self.assessments,
                _ASSESSMENT_COLUMNS,
                "patient_id, instrument, day, CAST(score AS DECIMAL(6,1))",
            ),
            "quarantined_patients": (self.quarantined, _QUARANTINED_COLUMNS, "*"),
        }
        for table, (rows, schema, select) in tables.items():
            if not rows:
                continue
            con.register("_cohort_rows", pl.DataFrame(rows, schema=schema, orient="row"))
            con.execute(f"INSERT INTO staging.{table} SELECT {select} FROM _cohort_rows")
            con.unregister("_cohort_rows")
        return con


_PATIENT_COLUMNS = {
    name: pl.String for name in ("patient_id", "site_id", "indication", "sex", "age_band")
}
_TREATMENT_COLUMNS = {
    "patient_id": pl.String,
    "day": pl.Int32,
    "session_number": pl.Int32,
    "route": pl.String,
    "dose_mg": pl.Float64,
    "dose_mg_per_kg": pl.Float64,
    "duration_min": pl.Int32,
}
# scores travel as strings and are cast to DECIMAL(6,1) inside DuckDB: exact, never a double
_ASSESSMENT_COLUMNS = {
    "patient_id": pl.String,
    "instrument": pl.String,
    "day": pl.Int32,
    "score": pl.String,
}
_QUARANTINED_COLUMNS = {"patient_id": pl.String, "indication": pl.String}


#: v1 primary instruments, only to let tests write ``scores=`` without naming the instrument.
PRIMARY = {
    code: spec["primary_instrument"]
    for code, spec in data_contracts.vocabulary()["indications"].items()
}


def derived(
    cohort: Cohort, tmp_path: Path, defs: OutcomeDefinitions, name: str = "outcomes.duckdb"
) -> duckdb.DuckDBPyConnection:
    """Write ``cohort`` to a DuckDB file in ``tmp_path`` and run the derivation on it."""
    con = cohort.connect(tmp_path / name)
    derive_patient_outcomes(con, defs)
    return con


def random_cohort(
    n_patients: int,
    seed: int,
    *,
    indications: tuple[str, ...] = ("MDD", "GAD", "CRPS", "DPN"),
    sites: tuple[str, ...] = ("S1", "S2", "S3"),
) -> Cohort:
    """A generated cohort for cross-checks against independent implementations: every patient
    has an evaluable baseline and 1-8 follow-up ratings at random days in [1, 90] (some past
    the window), with scores drifting down so that roughly half respond at some point."""
    rng = np.random.default_rng(seed)
    cohort = Cohort()
    for i in range(n_patients):
        indication = str(rng.choice(indications))
        instrument = PRIMARY[indication]
        top = {"MADRS": 40, "GAD7": 20, "NRS_PAIN": 9}[instrument]
        baseline = int(rng.integers(top // 2 + 1, top + 1))
        sessions = sorted({0, *rng.choice(np.arange(1, 40), size=5, replace=False).tolist()})
        days = sorted(set(rng.integers(1, 91, size=int(rng.integers(1, 9))).tolist()))
        scores: dict[int, str | int | float] = {-int(rng.integers(0, 15)): baseline}
        for day in days:
            drop = rng.uniform(0.0, 0.9) * min(1.0, day / 30)
            value = baseline * (1 - drop)
            scores[day] = f"{value:.1f}" if instrument == "NRS_PAIN" else str(round(value))
        cohort.patient(
            f"P{i:05d}",
            indication,
            site_id=str(rng.choice(sites)),
            sex=str(rng.choice(["F", "M"])),
            age_band=str(rng.choice(["25-34", "35-44", "45-54"])),
            sessions=sessions,
            route=str(rng.choice(["IV", "IN"])),
            scores=scores,
        )
    return cohort


# Every column of marts.md (v1), to check the catalog describes all of them.
MARTS_MD_COLUMNS = {
    "response_rates": """indication instrument endpoint population stratum stratum_value
        n_patients n_responders response_rate response_ci_low response_ci_high n_remitters
        remission_rate remission_ci_low remission_ci_high response_definition
        remission_definition ci_method suppressed""",
    "time_to_response": """indication instrument stratum stratum_value n_patients n_responders
        n_censored median_days median_ci_low median_ci_high cum_response_d1 cum_response_d7
        cum_response_d14 cum_response_d28 cum_response_d84 max_followup_day
        responders_median_days responders_q1_days responders_q3_days responders_median_sessions
        ci_method suppressed""",
    "time_to_response_curve": "indication instrument day cum_response ci_low ci_high n_at_risk",
    "indication_tests": "test endpoint instrument_family indications statistic df p_value "
    "exploratory",
    "attrition": "indication instrument analysis reason n_patients suppressed",
    "safety_events": """indication route dose_band event n_sessions n_events
        events_per_100_sessions n_patients n_patients_with_event patient_event_rate
        patient_event_ci_low patient_event_ci_high n_serious suppressed""",
    "data_quality": """export_id status table_name rows_read rows_accepted rows_quarantined
        rows_duplicate blocked blocking_reason exported_at validated_at""",
}
