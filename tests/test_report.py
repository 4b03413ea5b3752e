"""Tests of the analyst report on a small hand-built ``marts`` schema in a real DuckDB file.

The marts are written by hand (not by the pipeline) so that each published value is known and
the expected strings can be computed from it: the report must print what the marts publish,
withheld cells as a dash, and nothing else.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import duckdb
import pytest
from matplotlib import image as mpimg

from ketamine_outcomes.report import (
    AT_RISK_SUPPRESSED,
    WITHHELD,
    _numbers_at_risk,
    render_html_report,
    render_km_plots,
    summary_lines,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMMON = "'v1-test', 'run-123', TIMESTAMP '2026-11-24 06:30:00'"
COMMON_COLS = "definition_version VARCHAR, run_id VARCHAR, built_at TIMESTAMP"

# (indication, instrument, endpoint, population, stratum, stratum_value, n, n_resp, rate, lo, hi,
#  n_rem, rem_rate, rem_lo, rem_hi, suppressed)
RATES = [
    ("MDD", "MADRS", "end_of_induction", "ITT", "overall", "all",
     560, 270, 0.48214, 0.44101, 0.52348, 150, 0.26786, 0.23295, 0.30586, False),
    ("MDD", "MADRS", "end_of_induction", "evaluable", "overall", "all",
     480, 270, 0.5625, 0.51779, 0.60621, 150, 0.3125, 0.27266, 0.35535, False),
    ("MDD", "MADRS", "ever", "ITT", "overall", "all",
     560, 330, 0.58929, 0.54804, 0.62928, 190, 0.33929, 0.30127, 0.37947, False),
    ("MDD", "MADRS", "ever", "evaluable", "overall", "all",
     520, 330, 0.63462, 0.59242, 0.67487, 190, 0.36538, 0.32514, 0.40764, False),
    ("MDD", "PHQ9", "end_of_induction", "ITT", "overall", "all",
     300, 120, 0.4, 0.34615, 0.45638, 60, 0.2, 0.15873, 0.24892, False),
    ("MDD", "MADRS", "end_of_induction", "ITT", "site", "siteA",
     540, 262, 0.48519, 0.44328, 0.52730, 146, 0.27037, 0.23449, 0.30952, False),
    # a small site: response withheld (responders 1-10), n stays published
    ("MDD", "MADRS", "end_of_induction", "ITT", "site", "siteB",
     20, None, None, None, None, None, None, None, None, True),
    ("CRPS", "NRS_PAIN", "end_of_induction", "ITT", "overall", "all",
     90, 31, 0.34444, 0.25443, 0.44722, 22, 0.24444, 0.16737, 0.34270, False),
    # a whole indication below the cell size: everything withheld
    ("GAD", "GAD7", "end_of_induction", "ITT", "overall", "all",
     None, None, None, None, None, None, None, None, None, True),
]


def _build_marts(db: Path, *, safety_rows: bool | None) -> None:
    """Create ``marts`` with the columns of marts.md; ``safety_rows=None``: no safety table."""
    con = duckdb.connect(str(db))
    con.execute("CREATE SCHEMA marts")
    con.execute(f"""CREATE TABLE marts.response_rates (
        indication VARCHAR, instrument VARCHAR, endpoint VARCHAR, population VARCHAR,
        stratum VARCHAR, stratum_value VARCHAR, n_patients BIGINT, n_responders BIGINT,
        response_rate DOUBLE, response_ci_low DOUBLE, response_ci_high DOUBLE,
        n_remitters BIGINT, remission_rate DOUBLE, remission_ci_low DOUBLE,
        remission_ci_high DOUBLE, suppressed BOOLEAN, response_definition VARCHAR,
        remission_definition VARCHAR, ci_method VARCHAR, {COMMON_COLS})""")
    for r in RATES:
        defs = (">= 50 % reduction in MADRS", "MADRS <= 10") if r[0] != "CRPS" else (
            ">= 30 % reduction in NRS", "NRS <= 3 (low pain state)")
        con.execute(
            "INSERT INTO marts.response_rates VALUES "
            f"(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'wilson',{COMMON})",
            [*r, *defs],
        )
    con.execute(f"""CREATE TABLE marts.time_to_response (
        indication VARCHAR, instrument VARCHAR, stratum VARCHAR, stratum_value VARCHAR,
        n_patients BIGINT, n_responders BIGINT, n_censored BIGINT, median_days DOUBLE,
        median_ci_low DOUBLE, median_ci_high DOUBLE, cum_response_d1 DOUBLE,
        cum_response_d7 DOUBLE, cum_response_d14 DOUBLE, cum_response_d28 DOUBLE,
        cum_response_d84 DOUBLE, max_followup_day INTEGER, responders_median_days DOUBLE,
        responders_q1_days DOUBLE, responders_q3_days DOUBLE, responders_median_sessions DOUBLE,
        ci_method VARCHAR, suppressed BOOLEAN, {COMMON_COLS})""")
    con.execute(f"""INSERT INTO marts.time_to_response VALUES
        ('MDD', 'MADRS', 'overall', 'all', 520, 330, 190, 14, 12, 17.5, 0.05, 0.31234,
         0.4, 0.55, 0.63462, 84, 10, 5, 21, 3, 'log-log', false, {COMMON}),
        ('MDD', 'PHQ9', 'overall', 'all', 300, 130, 170, 28, 21, NULL, 0.02, 0.2, 0.3, 0.45,
         NULL, 70, 14, 7, 28, 4, 'log-log', false, {COMMON}),
        ('CRPS', 'NRS_PAIN', 'overall', 'all', 85, 30, 55, NULL, 56, NULL, 0.01, 0.12,
         0.2, 0.27123, 0.38, 84, 21, 9, 42, 6, 'log-log', false, {COMMON}),
        ('GAD', 'GAD7', 'overall', 'all', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'log-log', true, {COMMON})""")
    con.execute(f"""CREATE TABLE marts.time_to_response_curve (
        indication VARCHAR, instrument VARCHAR, day INTEGER, cum_response DOUBLE,
        ci_low DOUBLE, ci_high DOUBLE, n_at_risk BIGINT, {COMMON_COLS})""")
    # Smooth hand-made step functions; at-risk NULL once below 11 as the mart does.
    for ind, instr, n0, scale, days in (
        ("MDD", "MADRS", 520, 22.0, [1, 2, 3, 5, 7, 9, 10, 14, 16, 21, 24, 28, 35, 42, 56, 63,
                                     70, 77, 84]),
        ("MDD", "PHQ9", 300, 45.0, [2, 5, 7, 12, 14, 21, 28, 35, 49, 56, 70]),
        ("CRPS", "NRS_PAIN", 85, 160.0, [3, 7, 10, 14, 21, 28, 42, 56, 70, 84]),
    ):
        for d in days:
            cum = 1 - math.exp(-d / scale)
            half = 0.03 + 0.002 * d
            at_risk = round(n0 * math.exp(-d / (scale * 0.8)))
            con.execute(
                f"INSERT INTO marts.time_to_response_curve VALUES (?,?,?,?,?,?,?,{COMMON})",
                [ind, instr, d, cum, max(0.0, cum - half), min(1.0, cum + half),
                 at_risk if at_risk >= 11 else None],
            )
    con.execute(f"""CREATE TABLE marts.indication_tests (
        test VARCHAR, endpoint VARCHAR, instrument_family VARCHAR, indications VARCHAR,
        statistic DOUBLE, df INTEGER, p_value DOUBLE, exploratory BOOLEAN, {COMMON_COLS})""")
    con.execute(f"""INSERT INTO marts.indication_tests VALUES
        ('logrank', 'time_to_first_response', 'depression_anxiety', 'MDD,GAD', 7.4321, 1,
         0.0064, true, {COMMON}),
        ('chi2', 'end_of_induction', 'all', 'MDD,GAD,CRPS', 3.2, 2, 0.2019, true, {COMMON})""")
    con.execute(f"""CREATE TABLE marts.attrition (
        indication VARCHAR, instrument VARCHAR, analysis VARCHAR, reason VARCHAR,
        n_patients BIGINT, suppressed BOOLEAN, {COMMON_COLS})""")
    con.execute(f"""INSERT INTO marts.attrition VALUES
        ('MDD', 'MADRS', 'end_of_induction', 'no baseline', 37, false, {COMMON}),
        ('MDD', 'MADRS', 'end_of_induction', 'baseline zero', NULL, true, {COMMON})""")
    con.execute("""CREATE TABLE marts.data_quality (
        export_id VARCHAR, status VARCHAR, table_name VARCHAR, rows_read BIGINT,
        rows_accepted BIGINT, rows_quarantined BIGINT, rows_duplicate BIGINT, blocked BOOLEAN,
        blocking_reason VARCHAR, exported_at TIMESTAMP, validated_at TIMESTAMP)""")
    con.execute("""INSERT INTO marts.data_quality VALUES
        ('siteA-20261124T0600', 'accepted', 'assessments', 12345, 12300, 40, 5, false, NULL,
         TIMESTAMP '2026-11-24 06:00:00', TIMESTAMP '2026-11-24 06:20:00'),
        ('siteB-20261124T0700', 'blocked', 'patients', 200, 0, 0, 0, true,
         'manifest row count 201 <> 200 rows & more', NULL, TIMESTAMP '2026-11-24 06:21:00'),
        ('siteC-20261124T0800', 'incomplete', NULL, NULL, NULL, NULL, NULL, false,
         NULL, NULL, TIMESTAMP '2026-11-24 06:22:00')""")
    if safety_rows is not None:
        con.execute(f"""CREATE TABLE marts.safety_events (
            indication VARCHAR, route VARCHAR, dose_band VARCHAR, event VARCHAR,
            n_sessions BIGINT, n_events BIGINT, events_per_100_sessions DOUBLE,
            n_patients BIGINT, n_patients_with_event BIGINT, patient_event_rate DOUBLE,
            patient_event_ci_low DOUBLE, patient_event_ci_high DOUBLE, n_serious BIGINT,
            suppressed BOOLEAN, {COMMON_COLS})""")
        if safety_rows:
            con.execute(f"""INSERT INTO marts.safety_events VALUES
                ('MDD', 'IV', '0.5-1', 'dissociation', 1200, 90, 7.5, 150, 60, 0.4, 0.32558,
                 0.47926, 1, false, {COMMON}),
                ('MDD', 'IM', '>1', 'dissociation', 300, 30, 10.0, 14, NULL, NULL, NULL, NULL,
                 0, true, {COMMON})""")
    con.execute("CHECKPOINT")
    con.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One marts file with safety rows; plots and report rendered once for the module."""
    base = tmp_path_factory.mktemp("report")
    db = base / "warehouse.duckdb"
    _build_marts(db, safety_rows=True)
    con = duckdb.connect(str(db), read_only=True)  # the report must only read
    try:
        plots = render_km_plots(con, base / "plots")
        report = render_html_report(con, base / "report.html", plots)
        lines = summary_lines(con)
    finally:
        con.close()
    return {"plots": plots, "report": report, "lines": lines}  # type: ignore[dict-item]


def _rate(rate: float, lo: float, hi: float) -> str:
    return f"{100 * rate:.1f} % ({100 * lo:.1f}-{100 * hi:.1f})"


def test_one_valid_png_per_indication_with_curve_rows(built: dict) -> None:
    plots = built["plots"]
    assert set(plots) == {"MDD", "CRPS"}  # GAD: suppressed, so no curve rows, no file
    assert len(list(next(iter(plots.values())).parent.glob("*.png"))) == 2
    for path in plots.values():
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 20_000
        assert b"http" not in data  # no Software tEXt chunk with matplotlib's URL
        img = mpimg.imread(path)
        assert img.shape[0] == pytest.approx(5.5 * 110, abs=2)
        assert img.shape[1] == pytest.approx(8 * 110, abs=2)


def test_no_curve_table_or_rows_gives_no_plots(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE SCHEMA marts")
    assert render_km_plots(con, tmp_path / "p") == {}
    con.execute("CREATE TABLE marts.time_to_response_curve (indication VARCHAR, "
                "instrument VARCHAR, day INTEGER, cum_response DOUBLE, ci_low DOUBLE, "
                "ci_high DOUBLE, n_at_risk BIGINT)")
    assert render_km_plots(con, tmp_path / "p") == {}
    con.close()


def test_numbers_at_risk_rule() -> None:
    days = [1.0, 5.0, 7.0, 20.0, 60.0]
    n = [100, 90, 80, 30, None]
    got = _numbers_at_risk(days, n, [0, 7, 14, 28, 56, 84], n_start=100)
    # n_at_risk on a row counts those followed up to at least that day, so at t it is the
    # first row with day >= t: 0 -> day 1 (100); 7 -> day 7 (80); 14 -> day 20 (30);
    # 28 and 56 -> day 60 (withheld); 84 is past the last follow-up day: nobody at risk.
    assert got == ["100", "80", "30", AT_RISK_SUPPRESSED, AT_RISK_SUPPRESSED, "0"]
    assert _numbers_at_risk(days, n, [60], n_start=100) == [AT_RISK_SUPPRESSED]


def test_html_numbers_and_withheld_cells(built: dict) -> None:
    text = built["report"].read_text(encoding="utf-8")
    for r in RATES:
        if r[8] is not None:
            assert _rate(r[8], r[9], r[10]) in text
        if r[12] is not None and r[2] == "end_of_induction":
            assert _rate(r[12], r[13], r[14]) in text
    assert "48.2 % (44.1-52.3)" in text
    assert WITHHELD in text
    assert "withheld: small cell (&lt; 11 patients)" in text
    # median with Brookmeyer-Crowley CI, an open upper limit, and a median not reached
    assert "14 (12-17.5)" in text
    assert "28 (21-NR)" in text
    assert "not reached" in text
    assert f"{100 * 0.31234:.1f} %" in text  # cum response d7
    assert f"{100 * 0.27123:.1f} %" in text  # CRPS d28
    assert "run-123" in text and "v1-test" in text and "2026-11-24 06:30:00" in text
    assert "exploratory" in text and "0.006" in text and "7.43" in text
    assert "no baseline" in text and ">37<" in text


def test_html_data_quality_escaping_and_self_contained(built: dict) -> None:
    text = built["report"].read_text(encoding="utf-8")
    for export_id in ("siteA-20261124T0600", "siteB-20261124T0700", "siteC-20261124T0800"):
        assert export_id in text
    assert ">12345<" in text and ">12300<" in text and ">40<" in text
    assert "manifest row count 201 &lt;&gt; 200 rows &amp; more" in text
    assert "<>" not in text
    assert "<script" not in text.lower()
    assert "http://" not in text and "https://" not in text
    assert re.search(r"\b(src|href)=\"(?!data:image/png;base64,|#)", text) is None
    assert text.count("data:image/png;base64,") == 2


def test_html_safety_section_only_with_rows(built: dict, tmp_path: Path) -> None:
    text = built["report"].read_text(encoding="utf-8")
    assert "Safety" in text
    assert f"{100 * 120 / 1500:.1f}" in text  # (90 + 30) events / (1200 + 300) sessions
    assert _rate(0.4, 0.32558, 0.47926) in text
    for safety_rows in (None, False):
        db = tmp_path / f"w-{safety_rows}.duckdb"
        _build_marts(db, safety_rows=safety_rows)
        con = duckdb.connect(str(db), read_only=True)
        out = render_html_report(con, tmp_path / f"r-{safety_rows}.html", {})
        con.close()
        other = out.read_text(encoding="utf-8")
        assert "Safety" not in other
        assert "48.2 % (44.1-52.3)" in other
        assert "data:image/png" not in other


def test_summary_lines(built: dict) -> None:
    lines = built["lines"]
    body = {ln.split()[0]: ln for ln in lines[2:] if ln.split()}
    assert _rate(0.48214, 0.44101, 0.52348) in body["MDD"] and "MADRS" in body["MDD"]
    assert body["MDD"].rstrip().endswith("14")
    assert _rate(0.34444, 0.25443, 0.44722) in body["CRPS"]
    assert body["CRPS"].rstrip().endswith("not reached")
    assert WITHHELD in body["GAD"] and "GAD7" in body["GAD"]
    assert "PHQ9" not in "\n".join(lines)
    # aligned: each column starts at the same offset on every row
    instr_col = lines[0].index("Instrument")
    assert all(ln[instr_col - 2:instr_col] == "  " for ln in lines[2:5])
    assert {len(ln) for ln in lines[:5]} == {len(lines[1])}
