"""Safety monitoring: marts.safety_events and the safety signal checks.

Hand-derivable cohorts are written straight into a real internal warehouse file (the real DDL of
``warehouse.ensure_schema``: per-export staging tables, supersession views, ``ops.data_quality``
with each export's tables and ``exported_at``); one test goes through the whole Dagster harness
with small CSV exports. Expected numbers are derived by hand in comments and cross-checked with
scipy (``binomtest`` for Wilson intervals and the rise test, ``gamma`` quantiles for the exact
Poisson intervals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest
from dagster import AssetCheckSeverity, Definitions
from scipy import stats

from ketamine_outcomes import warehouse
from ketamine_outcomes.outcome_definitions import OutcomeDefinitions, load_definitions
from ketamine_outcomes.safety import (
    SAFETY_EVENTS_SCHEMA,
    adverse_event_types,
    build_safety_events,
    build_safety_tables,
    dose_band_sql,
    safety_signals,
    summary_lines,
    unattributed_events,
)
from ketamine_outcomes.suppression import COMMON_COLUMNS

BUILT_AT = datetime(2026, 6, 2, 6, 30, tzinfo=UTC)
EVENTS = adverse_event_types()
MART_COLUMNS = [*SAFETY_EVENTS_SCHEMA, *COMMON_COLUMNS]


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTCOMES_DEFINITIONS", raising=False)


@pytest.fixture(scope="module")
def defs() -> OutcomeDefinitions:
    return load_definitions()


# ---------------------------------------------------------------------------------------------
# Cohort helper: rows of each export, written through the real warehouse DDL
# ---------------------------------------------------------------------------------------------


@dataclass
class Export:
    export_id: str
    exported_at: datetime | None
    with_adverse_events: bool = True
    patients: list[tuple] = field(default_factory=list)
    treatments: list[tuple] = field(default_factory=list)
    adverse_events: list[tuple] = field(default_factory=list)

    def patient(self, patient_id: str, indication: str = "MDD") -> str:
        self.patients.append((patient_id, "S1", indication, "F", "35-44"))
        return patient_id

    def session(self, patient_id: str, day: int, number: int, route: str = "IV",
                mg_per_kg: float | None = 0.5) -> None:
        dose = None if mg_per_kg is None else round(70 * mg_per_kg, 1)
        self.treatments.append((patient_id, day, number, route, dose, mg_per_kg, 40))

    def event(self, patient_id: str, day: int, event: str, serious: bool = False) -> None:
        self.adverse_events.append((patient_id, day, event, "MILD", serious))


COLUMNS = {
    "patients": ["patient_id", "site_id", "indication", "sex", "age_band"],
    "treatments": ["patient_id", "day", "session_number", "route", "dose_mg", "dose_mg_per_kg",
                   "duration_min"],
    "assessments": ["patient_id", "instrument", "day", "score"],
    "adverse_events": ["patient_id", "day", "event", "severity", "serious"],
}


def write_warehouse(path: Path, *exports: Export) -> duckdb.DuckDBPyConnection:
    """Stage ``exports`` in a fresh internal warehouse, with their accounting rows, then build
    what the ``patient_outcomes`` step builds for the safety code (``derived.current_*``,
    ``derived.safety_sessions``, ``derived.safety_attributed_events``)."""
    con = warehouse.connect(path)
    for export in exports:
        tables = {"patients": export.patients, "treatments": export.treatments,
                  "assessments": []}
        if export.with_adverse_events:
            tables["adverse_events"] = export.adverse_events
        for table, rows in tables.items():
            frame = pl.DataFrame(rows, schema=COLUMNS[table], orient="row",
                                 infer_schema_length=None)
            frame = frame.with_row_index("source_row", offset=1).with_columns(
                export_id=pl.lit(export.export_id)
            )
            if rows:
                con.register("_rows", frame)
                con.execute(f"INSERT INTO staging.{table} BY NAME SELECT * FROM _rows")
                con.unregister("_rows")
            con.execute(
                "INSERT INTO ops.data_quality VALUES (?, 'accepted', ?, ?, ?, ?, 0, 0, false, "
                "NULL, ?, ?)",
                [export.export_id, table, f"{table}.csv", len(rows), len(rows),
                 export.exported_at, BUILT_AT],
            )
    warehouse.materialise_current(con, "derived")
    build_safety_tables(con, "derived")
    return con


def mart(con: duckdb.DuckDBPyConnection, where: str = "true") -> list[dict]:
    cur = con.execute(f"SELECT * FROM build.safety_events WHERE {where}")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def one(con: duckdb.DuckDBPyConnection, where: str) -> dict:
    rows = mart(con, where)
    assert len(rows) == 1, (where, rows)
    return rows[0]


def wilson(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return ci.low, ci.high


JAN = datetime(2026, 1, 1, tzinfo=UTC)
JUN = datetime(2026, 6, 1, tzinfo=UTC)


# ---------------------------------------------------------------------------------------------
# The mart
# ---------------------------------------------------------------------------------------------


def test_rates_patient_shares_and_wilson_ci(tmp_path: Path, defs: OutcomeDefinitions):
    # 30 MDD patients, IV 0.5 mg/kg on days 0 and 7: one cell, 60 sessions.
    # DISSOCIATION on day 0 for patients 0-14 and again on day 7 for patients 0-4:
    #   20 events / 60 sessions = 33.33 per 100; 15 of 30 patients = 0.5; 2 serious.
    e = Export("e1", JAN)
    for i in range(30):
        pid = e.patient(f"PT{i:04d}")
        e.session(pid, 0, 1)
        e.session(pid, 7, 2)
        if i < 15:
            e.event(pid, 0, "DISSOCIATION", serious=i < 2)
        if i < 5:
            e.event(pid, 7, "DISSOCIATION")
    con = write_warehouse(tmp_path / "w.duckdb", e)
    assert build_safety_events(con, defs, "run-1", BUILT_AT) == len(EVENTS)

    columns = [c for c, *_ in con.execute("DESCRIBE build.safety_events").fetchall()]
    assert columns == MART_COLUMNS
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                             "WHERE table_name = 'safety_events'").fetchall())
    assert types["built_at"] == "TIMESTAMP WITH TIME ZONE" and types["n_events"] == "BIGINT"

    row = one(con, "event = 'DISSOCIATION'")
    assert (row["indication"], row["route"], row["dose_band"]) == ("MDD", "IV", "<=0.5")
    assert (row["n_sessions"], row["n_events"], row["n_serious"]) == (60, 20, 2)
    assert row["events_per_100_sessions"] == pytest.approx(100 * 20 / 60)
    assert (row["n_patients"], row["n_patients_with_event"]) == (30, 15)
    assert row["patient_event_rate"] == 0.5
    low, high = wilson(15, 30)
    assert row["patient_event_ci_low"] == pytest.approx(low, abs=1e-12)
    assert row["patient_event_ci_high"] == pytest.approx(high, abs=1e-12)
    assert not row["suppressed"]
    assert (row["definition_version"], row["run_id"]) == (defs.definition_version, "run-1")
    assert row["built_at"] == BUILT_AT

    # every other configured event type has its zero row, with the Wilson interval of 0/30
    zero = one(con, "event = 'URINARY'")
    assert (zero["n_sessions"], zero["n_events"], zero["events_per_100_sessions"]) == (60, 0, 0)
    assert (zero["n_patients"], zero["n_patients_with_event"]) == (30, 0)
    assert zero["patient_event_rate"] == 0 and zero["patient_event_ci_low"] == 0
    assert zero["patient_event_ci_high"] == pytest.approx(wilson(0, 30)[1], abs=1e-12)
    assert [r["event"] for r in mart(con)] == list(EVENTS)


def test_dose_bands_inclusive_upper_bounds_and_unknown(tmp_path: Path, defs: OutcomeDefinitions):
    # one session each: 0.5 -> <=0.5 (inclusive), 0.5001 -> 0.5-1, 1.0 -> 0.5-1 (inclusive),
    # 1.0001 -> >1, 30 -> >1, no mg/kg dose -> unknown
    e = Export("e1", JAN)
    doses = {"PT0001": 0.5, "PT0002": 0.5001, "PT0003": 1.0, "PT0004": 1.0001, "PT0005": 30.0,
             "PT0006": None, "PT0007": 0.1}
    for pid, dose in doses.items():
        e.patient(pid)
        e.session(pid, 0, 1, route="IV" if dose is not None else "IN", mg_per_kg=dose)
    con = write_warehouse(tmp_path / "w.duckdb", e)
    build_safety_events(con, defs, "r", BUILT_AT)
    sessions = dict(con.execute(
        "SELECT dose_band, n_sessions FROM build.safety_events WHERE event = 'OTHER'").fetchall())
    assert sessions == {"<=0.5": 2, "0.5-1": 2, ">1": 2, "unknown": 1}
    # rows come in the configured band order, unknown last (route IN sorts after IV here)
    bands = [r[0] for r in con.execute(
        "SELECT dose_band FROM build.safety_events WHERE event = 'OTHER'").fetchall()]
    assert bands == ["<=0.5", "0.5-1", ">1", "unknown"]


def test_dose_band_bounds_are_exact_for_decimal_bounds(tmp_path: Path):
    # 0.3 is not a binary fraction: a dose exported as 0.3 must still be in the band "<=0.3"
    override = tmp_path / "bands.yaml"
    override.write_text(
        "safety_dose_bands: [{label: low, max_mg_per_kg: 0.3}, {label: high, max_mg_per_kg: null}]"
        "\nsafety_unknown_dose_band: no_dose\n", encoding="utf-8")
    custom = load_definitions(override)
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT d, {dose_band_sql(custom, 'd')} FROM (VALUES (0.3::DOUBLE), "
        "(CAST('0.3' AS DOUBLE)), (0.30000000000000004::DOUBLE), (NULL::DOUBLE)) t(d)"
    ).fetchall()
    assert [r[1] for r in rows] == ["low", "low", "high", "no_dose"]


def test_events_are_attributed_to_the_session_they_followed(
    tmp_path: Path, defs: OutcomeDefinitions
):
    e = Export("e1", JAN)
    pid = e.patient("PT0001")
    e.session(pid, 0, 1, "IV", 0.5)      # IV <=0.5
    e.session(pid, 7, 2, "IM", 1.5)      # IM >1
    e.session(pid, 14, 3, "IV", 0.8)     # IV 0.5-1 ... and a second session the same day:
    e.session(pid, 14, 4, "ORAL", None)  # ORAL unknown (the later one, session 4)
    e.event(pid, 0, "HEADACHE")          # same day          -> day 0  (IV <=0.5)
    e.event(pid, 3, "NAUSEA_VOMITING")   # after day 0       -> day 0  (IV <=0.5)
    e.event(pid, 7, "DIZZINESS")         # same day as day 7 -> day 7  (IM >1)
    e.event(pid, 20, "SEDATION", True)   # after day 14      -> session 4 (ORAL unknown)
    e.event(pid, 10, "SEDATION")         # after day 7       -> day 7  (IM >1)
    late = e.patient("PT0002")
    e.session(late, 5, 1)                # first staged administration on day 5 ...
    e.event(late, 2, "HEADACHE")         # ... so this event has none before it: unattributed
    lone = e.patient("PT0003")           # no administration at all
    e.event(lone, 0, "OTHER")
    con = write_warehouse(tmp_path / "w.duckdb", e)
    build_safety_events(con, defs, "r", BUILT_AT)

    got = {(r[0], r[1], r[2]): r[3:] for r in con.execute(
        "SELECT route, dose_band, event, n_events, n_serious FROM build.safety_events "
        "WHERE n_events > 0").fetchall()}
    assert got == {
        ("IV", "<=0.5", "HEADACHE"): (1, 0),
        ("IV", "<=0.5", "NAUSEA_VOMITING"): (1, 0),
        ("IM", ">1", "DIZZINESS"): (1, 0),
        ("IM", ">1", "SEDATION"): (1, 0),
        ("ORAL", "unknown", "SEDATION"): (1, 1),
    }
    sessions = dict(((r[0], r[1]), r[2]) for r in con.execute(
        "SELECT route, dose_band, n_sessions FROM build.safety_events WHERE event = 'OTHER'"
    ).fetchall())
    # PT0002's day-5 session is an IV <=0.5 session too (2 there)
    assert sessions == {("IV", "<=0.5"): 2, ("IM", ">1"): 1, ("IV", "0.5-1"): 1,
                        ("ORAL", "unknown"): 1}
    assert unattributed_events(con) == 2


def test_suppression_withholds_patient_counts_only(tmp_path: Path, defs: OutcomeDefinitions):
    e = Export("e1", JAN)
    # cell MDD/IV/<=0.5: 15 patients x 2 sessions
    #   NAUSEA 3 of 15 patients (4 events, 1 serious) -> withheld (3 is small)
    #   DISSOCIATION 14 of 15 -> withheld (complement 1 is small)
    #   HEADACHE 0 of 15, SEDATION 15 of 15 (complement 0) -> published
    for i in range(15):
        pid = e.patient(f"PA{i:04d}")
        e.session(pid, 0, 1)
        e.session(pid, 7, 2)
        e.event(pid, 0, "SEDATION")
        if i < 14:
            e.event(pid, 0, "DISSOCIATION")
        if i < 3:
            e.event(pid, 0, "NAUSEA_VOMITING", serious=i == 0)
    e.event("PA0000", 7, "NAUSEA_VOMITING")
    # cell GAD/IV/<=0.5: 5 patients -> n_patients small, every row of the cell withheld
    for i in range(5):
        pid = e.patient(f"PB{i:04d}", "GAD")
        e.session(pid, 0, 1)
        e.event(pid, 0, "HEADACHE")
    con = write_warehouse(tmp_path / "w.duckdb", e)
    build_safety_events(con, defs, "r", BUILT_AT)

    patient_cols = ("n_patients", "n_patients_with_event", "patient_event_rate",
                    "patient_event_ci_low", "patient_event_ci_high")
    nausea = one(con, "indication = 'MDD' AND event = 'NAUSEA_VOMITING'")
    assert nausea["suppressed"] and all(nausea[c] is None for c in patient_cols)
    assert (nausea["n_sessions"], nausea["n_events"], nausea["n_serious"]) == (30, 4, 1)
    assert nausea["events_per_100_sessions"] == pytest.approx(100 * 4 / 30)
    dissociation = one(con, "indication = 'MDD' AND event = 'DISSOCIATION'")
    assert dissociation["suppressed"] and all(dissociation[c] is None for c in patient_cols)
    assert (dissociation["n_sessions"], dissociation["n_events"]) == (30, 14)
    for event, with_event in (("HEADACHE", 0), ("SEDATION", 15)):
        row = one(con, f"indication = 'MDD' AND event = '{event}'")
        assert not row["suppressed"]
        assert (row["n_patients"], row["n_patients_with_event"]) == (15, with_event)
    gad = mart(con, "indication = 'GAD'")
    assert len(gad) == len(EVENTS)
    assert all(r["suppressed"] and r["n_patients"] is None for r in gad)
    headache = one(con, "indication = 'GAD' AND event = 'HEADACHE'")
    assert (headache["n_sessions"], headache["n_events"]) == (5, 5)
    assert headache["events_per_100_sessions"] == 100


def test_no_adverse_events_exported_gives_an_empty_mart(tmp_path: Path, defs: OutcomeDefinitions):
    e = Export("e1", JAN, with_adverse_events=False)
    for i in range(20):
        e.session(e.patient(f"PT{i:04d}"), 0, 1)
    con = write_warehouse(tmp_path / "w.duckdb", e)
    assert build_safety_events(con, defs, "r", BUILT_AT) == 0
    columns = [c for c, *_ in con.execute("DESCRIBE build.safety_events").fetchall()]
    assert columns == MART_COLUMNS
    signals = safety_signals(con, defs)
    assert [s.event for s in signals] == list(EVENTS)
    assert not any(s.fired for s in signals)
    assert all(s.recent_sessions == s.earlier_sessions == 0 and s.p_value is None
               for s in signals)


def test_only_patients_of_exports_with_adverse_events_are_counted(
    tmp_path: Path, defs: OutcomeDefinitions
):
    # site A exports adverse events, site B does not: B's sessions were not monitored and must
    # not dilute the rates
    a = Export("siteA-1", JAN)
    b = Export("siteB-1", JAN, with_adverse_events=False)
    for i in range(12):
        a.session(a.patient(f"PA{i:04d}"), 0, 1)
        b.session(b.patient(f"PB{i:04d}"), 0, 1)
    a.event("PA0000", 0, "HEADACHE")
    con = write_warehouse(tmp_path / "w.duckdb", a, b)
    build_safety_events(con, defs, "r", BUILT_AT)
    row = one(con, "event = 'HEADACHE'")
    assert (row["n_sessions"], row["n_events"]) == (12, 1)


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------


def signal_cohort(path: Path, recent_at: datetime = JUN) -> duckdb.DuckDBPyConnection:
    """200 earlier sessions (export e1, January: days 0 and 7 of 100 patients) and 100 recent
    ones (e2, June, day 14: 151 days later, so e1 is outside the 90-day window). e2 re-sends
    20 January sessions, which stay earlier (first delivery). Events, earlier / recent:

    * HYPERTENSION 28/200 = 14 vs 16/100 = 16 per 100: above the threshold 15, no rise;
    * DIZZINESS 60/200 = 30 vs 30/100 = 30: exactly the threshold 30 is not above it;
    * SEDATION 4/200 = 2 vs 12/100 = 12: below the threshold 25, but a significant rise
      (P(X >= 12) for X ~ Bin(16, 100/300) is 0.0005 < 0.01);
    * HEADACHE 10/200 = 5 vs 8/100 = 8: quiet. One earlier HEADACHE is delivered only in e2,
      but it follows a January session, so it is earlier.
    """
    e1, e2 = Export("e1", JAN), Export("e2", recent_at)
    for i in range(100):
        pid = e1.patient(f"PT{i:04d}")
        e2.patient(pid)
        e1.session(pid, 0, 1)
        e1.session(pid, 7, 2)
        e2.session(pid, 14, 3)
        if i < 10:  # re-sent verbatim
            e2.treatments.extend(e1.treatments[-2:])
    earlier = {"HYPERTENSION": 28, "DIZZINESS": 60, "SEDATION": 4, "HEADACHE": 9}
    for event, n in earlier.items():
        for i in range(n):  # the first 100 after day-0 sessions, the next after day 7
            e1.event(f"PT{i % 100:04d}", 0 if i < 100 else 7, event)
    e2.event("PT0099", 8, "HEADACHE")
    recent = {"HYPERTENSION": 16, "DIZZINESS": 30, "SEDATION": 12, "HEADACHE": 8}
    for event, n in recent.items():
        for i in range(n):
            e2.event(f"PT{i:04d}", 14, event)
    return write_warehouse(path, e1, e2)


def test_signals_threshold_and_significant_rise(tmp_path: Path, defs: OutcomeDefinitions):
    con = signal_cohort(tmp_path / "w.duckdb")
    signals = {s.event: s for s in safety_signals(con, defs)}
    assert list(signals) == list(EVENTS)
    for s in signals.values():
        assert (s.earlier_sessions, s.recent_sessions) == (200, 100)
        assert s.recent_since == JUN - timedelta(days=90) and s.newest_export_at == JUN
        assert s.alpha == 0.01 and "poisson.test" in s.test

    expected = {  # event: (earlier events, recent events, exceeds threshold, significant rise)
        "HYPERTENSION": (28, 16, True, False),
        "DIZZINESS": (60, 30, False, False),
        "SEDATION": (4, 12, False, True),
        "HEADACHE": (10, 8, False, False),
        "URINARY": (0, 0, False, False),
    }
    for event, (k0, k1, exceeds, rise) in expected.items():
        s = signals[event]
        assert (s.earlier_events, s.recent_events) == (k0, k1), event
        assert (s.exceeds_threshold, s.significant_rise) == (exceeds, rise), event
        assert s.fired == (exceeds or rise)
        assert s.recent_rate == pytest.approx(100 * k1 / 100)
        assert s.earlier_rate == pytest.approx(100 * k0 / 200)
        p = (stats.binomtest(k1, k0 + k1, 100 / 300, alternative="greater").pvalue
             if k0 + k1 else 1.0)
        assert s.p_value == pytest.approx(p, rel=1e-9), event
        # exact Poisson CI per 100 sessions, via gamma quantiles (independent of chi-square)
        low = stats.gamma.ppf(0.025, k1) if k1 else 0.0
        high = stats.gamma.ppf(0.975, k1 + 1)
        assert s.recent_ci_low == pytest.approx(100 * low / 100, rel=1e-9)
        assert s.recent_ci_high == pytest.approx(100 * high / 100, rel=1e-9)
        assert s.earlier_ci_high == pytest.approx(
            100 * stats.gamma.ppf(0.975, k0 + 1) / 200, rel=1e-9)
    assert signals["SEDATION"].p_value < 0.001
    assert "significant rise" in signals["SEDATION"].summary
    assert "above threshold 15" in signals["HYPERTENSION"].summary
    assert not any(signals[e].fired for e in EVENTS if e not in ("HYPERTENSION", "SEDATION"))


def test_signal_window_boundary_and_configuration(tmp_path: Path, defs: OutcomeDefinitions):
    # e2 exactly 90 days after e1: e1 is inside the window (inclusive), so every session is
    # recent and nothing is earlier: no test, only thresholds
    con = signal_cohort(tmp_path / "w.duckdb", recent_at=JAN + timedelta(days=90))
    signals = {s.event: s for s in safety_signals(con, defs)}
    s = signals["SEDATION"]
    assert (s.recent_sessions, s.earlier_sessions) == (300, 0)
    assert s.p_value is None and not s.significant_rise and s.earlier_rate is None
    assert signals["HYPERTENSION"].recent_events == 44  # 44/300 = 14.7 <= 15
    assert not any(x.fired for x in signals.values())

    # a lower threshold and a looser alpha, by configuration
    override = tmp_path / "signals.yaml"
    override.write_text("safety_signals:\n  alpha: 0.5\n  recent_window_days: 30\n"
                        "  thresholds_per_100_sessions: {HEADACHE: 5}\n", encoding="utf-8")
    custom = load_definitions(override)
    assert custom.definition_version != defs.definition_version
    con.close()
    con = signal_cohort(tmp_path / "june.duckdb")
    signals = {s.event: s for s in safety_signals(con, custom)}
    assert signals["HEADACHE"].exceeds_threshold  # 8 per 100 > 5
    assert signals["HEADACHE"].significant_rise  # p = 0.16 < 0.5


def test_signal_configuration_is_validated(tmp_path: Path):
    bad = {
        "safety_signals: {thresholds_per_100_sessions: {NOT_AN_EVENT: 1}}": "NOT_AN_EVENT",
        "safety_signals: {alpha: 1.5}": "alpha",
        "safety_signals: {recent_window_days: 0}": "recent_window_days",
        "safety_signals: {typo: 1}": "typo",
    }
    for i, (text, message) in enumerate(bad.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            load_definitions(path)


# ---------------------------------------------------------------------------------------------
# End to end through Dagster
# ---------------------------------------------------------------------------------------------


def _csv(header: str, rows: list[str]) -> str:
    return header + "\n" + "".join(r + "\n" for r in rows)


def _export(pipeline, export_id: str, exported_at: str, tables: dict[str, str]) -> None:
    counts = {t: text.count("\n") - 1 for t, text in tables.items()}
    pipeline.write_export(export_id, tables, manifest={
        "source": "test", "exported_at": exported_at, "row_counts": counts})


def test_end_to_end_mart_published_and_signal_checks(pipeline):
    from pipelines import definitions as code_location

    patients = _csv("patient_id,site_id,indication,sex,age_band",
                    [f"PT{i:04d},site_a,MDD,F,35-44" for i in range(12)])
    header_t = "patient_id,day,session_number,route,dose_mg,dose_mg_per_kg,duration_min"
    header_a = "patient_id,instrument,day,score"
    header_e = "patient_id,day,event,severity,serious"
    # January: 24 sessions (days 0 and 7), 6 dissociations, no urinary event
    _export(pipeline, "site_a-20260101T0000", "2026-01-01T00:00:00+00:00", {
        "patients": patients,
        "treatments": _csv(header_t, [f"PT{i:04d},{d},{n},IV,35,0.5,40"
                                      for i in range(12) for n, d in ((1, 0), (2, 7))]),
        "assessments": _csv(header_a, [f"PT{i:04d},MADRS,0,30" for i in range(12)]),
        "adverse_events": _csv(header_e, [f"PT{i:04d},0,DISSOCIATION,MILD,false"
                                          for i in range(6)]),
    })
    # June: 12 new sessions on day 14 (ketamine 1.2 mg/kg), 3 urinary events: 25 per 100
    # sessions > threshold 2 (p = 1/27 = 0.037 is no significant rise at 0.01)
    _export(pipeline, "site_a-20260601T0000", "2026-06-01T00:00:00+00:00", {
        "patients": patients,
        "treatments": _csv(header_t, [f"PT{i:04d},14,3,IV,84,1.2,40" for i in range(12)]),
        "assessments": _csv(header_a, [f"PT{i:04d},MADRS,28,12" for i in range(12)]),
        "adverse_events": _csv(header_e, [f"PT{i:04d},14,URINARY,MODERATE,true"
                                          for i in range(3)]),
    })
    pipeline.ingest_all()
    assert code_location.defs.asset_checks, "the safety checks are registered"
    job_defs = Definitions(
        assets=list(code_location.defs.assets),
        asset_checks=list(code_location.defs.asset_checks),
        jobs=[code_location.publish_marts_job],
        resources={"outcomes_warehouse": pipeline.resource()},
    )
    res = job_defs.resolve_job_def("publish_marts_job").execute_in_process(
        instance=pipeline.instance)
    assert res.success

    rows = pipeline.marts(
        "SELECT route, dose_band, event, n_sessions, n_events, n_serious, n_patients, suppressed "
        "FROM marts.safety_events WHERE n_events > 0 ORDER BY event")
    assert rows == [("IV", "<=0.5", "DISSOCIATION", 24, 6, 0, None, True),
                    ("IV", ">1", "URINARY", 12, 3, 3, None, True)]
    assert pipeline.marts("SELECT count(*) FROM marts.safety_events") == [(2 * len(EVENTS),)]
    comment = pipeline.marts("SELECT comment FROM duckdb_tables() WHERE table_name = "
                             "'safety_events'")[0][0]
    assert comment and "Adverse events" in comment

    checks = {ev.check_name: ev for ev in res.get_asset_check_evaluations()
              if ev.asset_key.path == ["marts", "safety_events"]}
    assert set(checks) == {f"safety_signal_{e.lower()}" for e in EVENTS}
    assert all(ev.severity == AssetCheckSeverity.WARN for ev in checks.values())
    urinary = checks["safety_signal_urinary"]
    assert not urinary.passed
    meta = {k: v.value for k, v in urinary.metadata.items()}
    assert meta["recent_rate_per_100_sessions"] == pytest.approx(25.0)
    assert meta["earlier_rate_per_100_sessions"] == 0.0
    assert meta["recent_ci_low"] < 25 < meta["recent_ci_high"]
    assert meta["earlier_ci_low"] == 0.0 and meta["earlier_ci_high"] > 0
    assert meta["p_value"] == pytest.approx(1 / 27)
    assert meta["exceeds_threshold"] is True and meta["significant_rise"] is False
    assert (meta["recent_sessions"], meta["earlier_sessions"]) == (12, 24)
    assert "poisson.test" in meta["test"]
    assert checks["safety_signal_dissociation"].passed

    con = duckdb.connect(str(pipeline.warehouse), read_only=True)
    try:
        text = "\n".join(summary_lines(con, [meta["summary"]]))
    finally:
        con.close()
    assert "MDD" in text and "DISSOCIATION 16.7" in text and "URINARY 8.3" in text
    assert "safety signals fired (WARN, 1)" in text and "above threshold 2" in text
