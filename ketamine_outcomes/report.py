"""Analyst report: Kaplan-Meier plots, a self-contained HTML report and a terminal summary.

Everything here reads the published marts only (``marts.md``), never a patient-level table,
and prints what the marts publish and nothing derived from withheld cells: a NULL that the
disclosure rules produced (``suppressed = true``) is shown as a dash with a footnote, never
recomputed. The only arithmetic is on published counts (safety events per 100 sessions summed
over routes and dose bands), which anyone holding the marts could do.

Pure domain code (no Dagster): the Dagster asset and ``make run`` call these functions with a
DuckDB connection to the published file; a read-only connection is enough.

The HTML is one file with inline CSS and the plots as base64 data URIs, so that it can be
mailed and opened offline: no JavaScript and no external URL (nothing phones home).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from data_contracts import vocabulary

MIN_CELL_SIZE = 11
"""Cell-size threshold of the disclosure rule (outcomes.md); only used for labels here."""

WITHHELD = "\u2014"
"""What a withheld (small-cell) value shows as: an em dash."""

WITHHELD_NOTE = f"withheld: small cell (< {MIN_CELL_SIZE} patients)"
AT_RISK_SUPPRESSED = f"<{MIN_CELL_SIZE}"
NOT_AVAILABLE = "n/a"

AT_RISK_DAYS: tuple[int, ...] = (0, 7, 14, 28, 56, 84)
"""Days of the numbers-at-risk table under each Kaplan-Meier plot."""

FOLLOW_UP_DAYS = 84
"""Default end of the follow-up window (outcomes.md); the x axis extends further if needed."""

PLOT_DPI = 110
PLOT_SIZE_IN = (8.0, 5.5)

STRATUM_LABELS: dict[str, str] = {
    "site": "Site",
    "route": "Route (first administration)",
    "sex": "Sex",
    "age_band": "Age band",
}

ATTRITION_REASON_ORDER: tuple[str, ...] = (
    "quarantined",
    "no administration",
    "no baseline",
    "baseline zero",
    "below minimum",
    "no endpoint",
    "no follow-up",
)
"""Substrings of the attrition reasons, in the order outcomes.md assigns them: display only."""

_COMMON_TABLES = (
    "response_rates",
    "time_to_response",
    "time_to_response_curve",
    "indication_tests",
    "attrition",
    "safety_events",
)


# ---------------------------------------------------------------------------------------------
# DuckDB helpers


def _ident(name: str) -> str:
    """Quote an SQL identifier: the schema name is a parameter, so never paste it raw."""
    return '"' + name.replace('"', '""') + '"'


def _tbl(schema: str, table: str) -> str:
    return f"{_ident(schema)}.{_ident(table)}"


def _query(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    """Rows as dicts, so that code names columns (the marts' public interface), not positions."""
    cur = con.execute(sql, list(params) if params is not None else [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _table_exists(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchall()[0]
    return bool(rows and rows[0])


def _columns(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> set[str]:
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchall()
    return {r[0] for r in rows}


# ---------------------------------------------------------------------------------------------
# Vocabulary


def _indication_meaning(indication: str) -> str:
    entry = vocabulary()["indications"].get(indication)
    return str(entry["meaning"]) if entry else indication


def _primary_instrument(indication: str) -> str | None:
    entry = vocabulary()["indications"].get(indication)
    return str(entry["primary_instrument"]) if entry else None


def _is_pain_instrument(instrument: str) -> bool:
    entry = vocabulary()["instruments"].get(instrument)
    return bool(entry) and entry.get("family") == "pain"


def _order_indications(found: Iterable[str]) -> list[str]:
    """Vocabulary order (the order analysts know), then any unknown ones alphabetically."""
    found_set = set(found)
    known = [i for i in vocabulary()["indications"] if i in found_set]
    return known + sorted(found_set - set(known))


def _order_instruments(indication: str, found: Iterable[str]) -> list[str]:
    """Primary instrument first, secondary ones (PHQ9) after it, alphabetically."""
    primary = _primary_instrument(indication)
    found_set = set(found)
    head = [primary] if primary in found_set else []
    return head + sorted(found_set - set(head))


# ---------------------------------------------------------------------------------------------
# Formatting: every withheld NULL is a dash; other NULLs say why they are empty.


def _num(x: float) -> str:
    """Days may be halves (median midpoint rule): show whole numbers without decimals."""
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def fmt_rate_ci(rate: float | None, low: float | None, high: float | None,
                suppressed: bool = False) -> str:
    """``48.2 % (44.1-52.3)``; a dash when withheld, ``n/a`` when undefined (n = 0)."""
    if rate is None:
        return WITHHELD if suppressed else NOT_AVAILABLE
    if low is None or high is None:
        return f"{_pct(rate)} %"
    return f"{_pct(rate)} % ({_pct(low)}-{_pct(high)})"


def _fmt_count(n: int | None, suppressed: bool = False) -> str:
    if n is None:
        return WITHHELD if suppressed else NOT_AVAILABLE
    return str(int(n))


def _fmt_cum(x: float | None, suppressed: bool) -> str:
    """A landmark is NULL past the stratum's follow-up, which is not a withheld cell."""
    if x is None:
        return WITHHELD if suppressed else "beyond follow-up"
    return f"{_pct(x)} %"


def fmt_median(median: float | None, low: float | None, high: float | None,
               suppressed: bool, with_ci: bool = True) -> str:
    """Median days with its CI; a CI end that is never reached shows as ``NR``."""
    if suppressed and median is None:
        return WITHHELD
    if median is None:
        return "not reached"
    if not with_ci:
        return _num(median)
    lo = _num(low) if low is not None else "NR"
    hi = _num(high) if high is not None else "NR"
    return f"{_num(median)} ({lo}-{hi})"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return NOT_AVAILABLE
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _fmt_plain(x: Any) -> str:
    """Operational values (data quality): NULL is just empty, never a withheld cell."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    return str(x)


# ---------------------------------------------------------------------------------------------
# Kaplan-Meier plots


def _numbers_at_risk(
    days: Sequence[float],
    n_at_risk: Sequence[int | None],
    times: Sequence[int],
    n_start: int | None,
) -> list[str]:
    """Number at risk at each of ``times``, as labels, from the published curve only.

    The curve mart's ``n_at_risk`` on a row is the number still followed up just before that
    day (time >= day), so the number at risk at t is the value of the first row with
    day >= t: nobody leaves the risk set between two rows. NULL there means the mart withheld
    it (``<11``). Past the last row (the last event or censoring day) nobody is at risk: 0.
    ``n_start`` is kept for an empty curve (the published n of the overall row).
    """
    out: list[str] = []
    for t in times:
        idx = next((i for i, d in enumerate(days) if d >= t), None)
        if idx is None:
            out.append("0" if days else (str(n_start) if n_start is not None
                                         else AT_RISK_SUPPRESSED))
        else:
            n = n_at_risk[idx]
            out.append(AT_RISK_SUPPRESSED if n is None else str(int(n)))
    return out


def _overall_ttr(con: duckdb.DuckDBPyConnection, schema: str) -> dict[tuple[str, str], dict]:
    if not _table_exists(con, schema, "time_to_response"):
        return {}
    rows = _query(
        con,
        f"SELECT * FROM {_tbl(schema, 'time_to_response')} WHERE stratum = 'overall'",
    )
    return {(r["indication"], r["instrument"]): r for r in rows}


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _plot_indication(
    indication: str,
    curves: dict[str, list[dict[str, Any]]],
    ttr: dict[tuple[str, str], dict],
    path: Path,
) -> None:
    """One figure: step curves with CI bands, median lines, numbers at risk aligned to x."""
    instruments = _order_instruments(indication, curves)
    primary = _primary_instrument(indication)
    max_day = max(
        [FOLLOW_UP_DAYS] + [float(r["day"]) for rows in curves.values() for r in rows]
    )

    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    table_height = 0.45 + 0.32 * len(instruments)
    gs = fig.add_gridspec(2, 1, height_ratios=[4.0, table_height], hspace=0.32)
    fig.subplots_adjust(left=0.16, right=0.97, top=0.86, bottom=0.04)
    ax = fig.add_subplot(gs[0])
    ax_risk = fig.add_subplot(gs[1], sharex=ax)

    colors = [f"C{i}" for i in range(10)]
    for k, instrument in enumerate(instruments):
        rows = curves[instrument]
        color = colors[k % len(colors)]
        day = [float(r["day"]) for r in rows]
        cum = [float(r["cum_response"]) if r["cum_response"] is not None else np.nan
               for r in rows]
        lo = [float(r["ci_low"]) if r["ci_low"] is not None else np.nan for r in rows]
        hi = [float(r["ci_high"]) if r["ci_high"] is not None else np.nan for r in rows]
        if day and day[0] > 0:  # the curve starts at 0 on day 0 (first administration)
            day, cum, lo, hi = [0.0] + day, [0.0] + cum, [0.0] + lo, [0.0] + hi

        row = ttr.get((indication, instrument))
        median = row.get("median_days") if row else None
        suppressed = bool(row.get("suppressed")) if row else False
        label = instrument + (" (primary)" if instrument == primary else "")
        if row is not None:
            label += ", median " + (
                f"{_num(median)} d" if median is not None
                else ("withheld" if suppressed else "not reached")
            )
        ax.step(day, cum, where="post", color=color, linewidth=2.0, label=label)
        ax.fill_between(day, lo, hi, step="post", color=color, alpha=0.2, linewidth=0)
        if median is not None:
            ax.plot([0, median], [0.5, 0.5], color="0.45", linestyle=":", linewidth=1.0)
            ax.plot([median, median], [0, 0.5], color=color, linestyle="--", linewidth=1.2)

    ax.set_xlim(0, max_day)
    ax.set_ylim(0, 1)
    ax.set_xticks(list(range(0, int(max_day) + 1, 7)))
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["0", "25 %", "50 %", "75 %", "100 %"])
    ax.set_xlabel("Days since first administration")
    ax.set_ylabel("Cumulative response, 1 \u2212 S(t)")
    ax.grid(True, color="0.9", linewidth=0.8)
    ax.set_axisbelow(True)
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Patch(facecolor="0.5", alpha=0.2, label="95 % CI (pointwise, log-log)"))
    ax.legend(handles=handles, loc="upper left", fontsize=9, frameon=True, framealpha=0.9)
    fig.suptitle(f"{indication}: {_indication_meaning(indication)}", fontsize=13,
                 fontweight="bold")
    ax.set_title("Time to first response, Kaplan-Meier (evaluable population)",
                 fontsize=10, color="0.3")

    # Numbers at risk: text in data x coordinates so each column sits under its x tick label.
    ax_risk.set_axis_off()
    ax_risk.set_ylim(len(instruments) + 0.6, 0.4)
    trans_label = ax_risk.get_yaxis_transform()  # x in axes coords, y in data coords
    trans_title = blended_transform_factory(fig.transFigure, ax_risk.transData)
    ax_risk.text(0.015, 0.45, "Number at risk", transform=trans_title, ha="left",
                 va="center", fontsize=9, fontweight="bold")
    for k, instrument in enumerate(instruments, start=1):
        rows = curves[instrument]
        row = ttr.get((indication, instrument))
        n_start = row.get("n_patients") if row else None
        labels = _numbers_at_risk(
            [float(r["day"]) for r in rows], [r["n_at_risk"] for r in rows],
            [t for t in AT_RISK_DAYS if t <= max_day], n_start,
        )
        ax_risk.text(-0.05, k, instrument, transform=trans_label, ha="right", va="center",
                     fontsize=9, color=colors[(k - 1) % len(colors)])
        for t, text in zip([t for t in AT_RISK_DAYS if t <= max_day], labels, strict=True):
            ax_risk.text(t, k, text, ha="center", va="center", fontsize=9)

    # No Software tEXt chunk: it carries a URL, and the file should say nothing but the plot.
    fig.savefig(path, dpi=PLOT_DPI, format="png", metadata={"Software": None})


def render_km_plots(
    con: duckdb.DuckDBPyConnection, out_dir: Path, schema: str = "marts"
) -> dict[str, Path]:
    """One PNG per indication with curve rows: cumulative response 1-S(t) per instrument.

    Uses matplotlib's object API (``Figure``, Agg canvas) rather than pyplot, so that no global
    backend or figure state is touched from inside a Dagster run or a test. Indications with no
    curve rows (curve withheld because the overall time-to-response row is suppressed, or curves
    turned off) get no file. Returns ``{indication: path}``.
    """
    out_dir = Path(out_dir)
    if not _table_exists(con, schema, "time_to_response_curve"):
        return {}
    rows = _query(
        con,
        "SELECT indication, instrument, day, cum_response, ci_low, ci_high, n_at_risk "
        f"FROM {_tbl(schema, 'time_to_response_curve')} ORDER BY indication, instrument, day",
    )
    by_ind: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        by_ind.setdefault(r["indication"], {}).setdefault(r["instrument"], []).append(r)
    if not by_ind:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    ttr = _overall_ttr(con, schema)
    plots: dict[str, Path] = {}
    for indication in _order_indications(by_ind):
        path = out_dir / f"km_{_safe_filename(indication)}.png"
        _plot_indication(indication, by_ind[indication], ttr, path)
        plots[indication] = path
    return plots


# ---------------------------------------------------------------------------------------------
# HTML


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #ccd; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-bottom: 0.4em; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.9em; }
th, td { border: 1px solid #ccd; padding: 0.25em 0.6em; vertical-align: top; }
th { background: #eef0f6; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.meta { color: #555; }
.meta code { background: #f3f3f6; padding: 0 0.3em; }
.note { color: #666; font-size: 0.85em; margin-top: 0.2em; }
.badge { background: #fff3cd; border: 1px solid #e0c36a; padding: 0 0.4em; font-size: 0.8em; }
img.km { max-width: 100%; border: 1px solid #dde; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _html_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Iterable[int] = ()
) -> str:
    """A table of already formatted strings (escaped here); footnoted if a cell is withheld."""
    num = set(numeric)
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>"]
    withheld = False
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            withheld = withheld or WITHHELD in cell
            cls = ' class="num"' if i in num else ""
            cells.append(f"<td{cls}>{_e(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    if withheld:
        out.append(f'<p class="note">{_e(WITHHELD)} {_e(WITHHELD_NOTE)}</p>')
    return "\n".join(out)


def _header_values(con: duckdb.DuckDBPyConnection, schema: str) -> dict[str, list[str]]:
    """Distinct run_id / built_at / definition_version over the marts (one each, normally)."""
    values: dict[str, set[str]] = {"run_id": set(), "built_at": set(), "definition_version": set()}
    for table in _COMMON_TABLES:
        if not _table_exists(con, schema, table):
            continue
        cols = _columns(con, schema, table)
        for col in values:
            if col in cols:
                rows = con.execute(
                    f"SELECT DISTINCT CAST({_ident(col)} AS VARCHAR) "
                    f"FROM {_tbl(schema, table)} WHERE {_ident(col)} IS NOT NULL"
                ).fetchall()
                values[col].update(r[0] for r in rows)
    return {k: sorted(v) for k, v in values.items()}


def _rates_section(indication: str, rr: list[dict[str, Any]]) -> str:
    overall = [r for r in rr if r["stratum"] == "overall"]
    if not overall:
        return "<p>No response rates published.</p>"
    index = {(r["instrument"], r["endpoint"], r["population"]): r for r in overall}
    instruments = _order_instruments(indication, {r["instrument"] for r in overall})
    pain = any(_is_pain_instrument(i) for i in instruments)
    mood = any(not _is_pain_instrument(i) for i in instruments)
    rem_label = " / ".join(
        x for x, on in (("remission", mood), ("low pain state", pain)) if on
    ).capitalize()
    headers = ["Instrument", "Population", "n (end of induction)",
               "Response at end of induction", f"{rem_label} at end of induction",
               "n (ever)", "Ever response"]
    rows: list[list[str]] = []
    for instrument in instruments:
        for population in ("ITT", "evaluable"):
            eoi = index.get((instrument, "end_of_induction", population))
            ever = index.get((instrument, "ever", population))
            if eoi is None and ever is None:
                continue
            cells = [instrument, population]
            if eoi is not None:
                s = bool(eoi["suppressed"])
                cells += [
                    _fmt_count(eoi["n_patients"], s),
                    fmt_rate_ci(eoi["response_rate"], eoi["response_ci_low"],
                                eoi["response_ci_high"], s),
                    fmt_rate_ci(eoi["remission_rate"], eoi["remission_ci_low"],
                                eoi["remission_ci_high"], s),
                ]
            else:
                cells += [NOT_AVAILABLE] * 3
            if ever is not None:
                s = bool(ever["suppressed"])
                cells += [
                    _fmt_count(ever["n_patients"], s),
                    fmt_rate_ci(ever["response_rate"], ever["response_ci_low"],
                                ever["response_ci_high"], s),
                ]
            else:
                cells += [NOT_AVAILABLE] * 2
            rows.append(cells)
    defs = []
    for instrument in instruments:
        r = next((x for x in overall if x["instrument"] == instrument), None)
        if r is not None:
            defs.append(
                f"<li>{_e(instrument)}: response: {_e(r.get('response_definition') or '')}; "
                f"{_e('low pain state' if _is_pain_instrument(instrument) else 'remission')}: "
                f"{_e(r.get('remission_definition') or '')}; "
                f"95 % CI: {_e(r.get('ci_method') or '')}</li>"
            )
    note = ('<p class="note">ITT: missing endpoint counts as non-response. '
            "Evaluable: patients with an endpoint assessment (end of induction) or with an "
            "assessment in the follow-up window (ever).</p>")
    return (_html_table(headers, rows, numeric=range(2, 7)) + note
            + '<ul class="note">' + "".join(defs) + "</ul>")


def _ttr_section(indication: str, ttr_rows: list[dict[str, Any]]) -> str:
    overall = [r for r in ttr_rows if r["stratum"] == "overall"]
    if not overall:
        return "<p>No time-to-response summary published.</p>"
    by_instr = {r["instrument"]: r for r in overall}
    headers = ["Instrument", "n (evaluable)", "Responders", "Censored",
               "Median days (95 % CI)", "Cum. response d7", "Cum. response d28",
               "Among responders: median day (Q1-Q3)"]
    rows = []
    for instrument in _order_instruments(indication, by_instr):
        r = by_instr[instrument]
        s = bool(r["suppressed"])
        q = (r.get("responders_median_days"), r.get("responders_q1_days"),
             r.get("responders_q3_days"))
        if q[0] is None:
            among = WITHHELD if s else NOT_AVAILABLE
        else:
            among = _num(q[0]) + (
                f" ({_num(q[1])}-{_num(q[2])})" if q[1] is not None and q[2] is not None else ""
            )
        rows.append([
            instrument,
            _fmt_count(r["n_patients"], s),
            _fmt_count(r["n_responders"], s),
            _fmt_count(r.get("n_censored"), s),
            fmt_median(r["median_days"], r["median_ci_low"], r["median_ci_high"], s),
            _fmt_cum(r.get("cum_response_d7"), s),
            _fmt_cum(r.get("cum_response_d28"), s),
            among,
        ])
    note = ('<p class="note">Kaplan-Meier, evaluable population; CI of the median by the '
            "Brookmeyer-Crowley method (NR: limit not reached); cumulative response is "
            "1 \u2212 S(t).</p>")
    return _html_table(headers, rows, numeric=range(1, 8)) + note


def _strata_section(indication: str, rr: list[dict[str, Any]]) -> str:
    rows_in = [r for r in rr if r["stratum"] != "overall" and r["endpoint"] == "end_of_induction"
               and r["population"] == "ITT"]
    if not rows_in:
        return "<p>No strata published.</p>"
    order = list(STRATUM_LABELS)
    instr_order = _order_instruments(indication, {r["instrument"] for r in rows_in})
    rows_in.sort(key=lambda r: (
        instr_order.index(r["instrument"]),
        order.index(r["stratum"]) if r["stratum"] in order else len(order), r["stratum"],
        str(r["stratum_value"]),
    ))
    rows = []
    for r in rows_in:
        s = bool(r["suppressed"])
        rows.append([
            r["instrument"], STRATUM_LABELS.get(r["stratum"], r["stratum"]),
            _fmt_plain(r["stratum_value"]), _fmt_count(r["n_patients"], s),
            fmt_rate_ci(r["response_rate"], r["response_ci_low"], r["response_ci_high"], s),
            fmt_rate_ci(r["remission_rate"], r["remission_ci_low"], r["remission_ci_high"], s),
        ])
    headers = ["Instrument", "Stratum", "Value", "n", "Response", "Remission / low pain state"]
    return _html_table(headers, rows, numeric=range(3, 6))


def _tests_section(con: duckdb.DuckDBPyConnection, schema: str) -> str:
    if not _table_exists(con, schema, "indication_tests"):
        return "<p>Table indication_tests is not present.</p>"
    rows_in = _query(con, f"SELECT * FROM {_tbl(schema, 'indication_tests')} "
                          "ORDER BY endpoint, instrument_family, test")
    if not rows_in:
        return "<p>No comparisons published.</p>"
    rows = [[
        _fmt_plain(r["test"]), _fmt_plain(r["endpoint"]), _fmt_plain(r["instrument_family"]),
        _fmt_plain(r["indications"]),
        f"{r['statistic']:.2f}" if r["statistic"] is not None else NOT_AVAILABLE,
        _fmt_plain(r["df"]), _fmt_p(r["p_value"]),
        "confirmatory" if r.get("exploratory") is False else "exploratory",
    ] for r in rows_in]
    headers = ["Test", "Endpoint", "Instrument family", "Indications", "Statistic", "df",
               "p-value", "Status"]
    note = ('<p class="note">Exploratory: instruments differ between indications; p-values are '
            "not adjusted for multiple comparisons.</p>")
    return _html_table(headers, rows, numeric=(4, 5, 6)) + note


def _attrition_section(con: duckdb.DuckDBPyConnection, schema: str) -> str:
    if not _table_exists(con, schema, "attrition"):
        return "<p>Table attrition is not present.</p>"
    rows_in = _query(con, f"SELECT * FROM {_tbl(schema, 'attrition')}")
    if not rows_in:
        return "<p>No attrition published.</p>"
    ind_order = _order_indications({r["indication"] for r in rows_in})
    rows_in.sort(key=lambda r: (ind_order.index(r["indication"]),
                                r["instrument"] != _primary_instrument(r["indication"]),
                                r["instrument"], r["analysis"], _reason_rank(r["reason"]),
                                str(r["reason"])))
    rows = [[r["indication"], r["instrument"], r["analysis"], r["reason"],
             _fmt_count(r["n_patients"], bool(r["suppressed"]))] for r in rows_in]
    return _html_table(["Indication", "Instrument", "Analysis", "Reason", "Patients"], rows,
                       numeric=(4,))


def _reason_rank(reason: str | None) -> int:
    """Attrition reasons in the order outcomes.md applies them (the first that applies wins)."""
    text = (reason or "").lower()
    for rank, key in enumerate(ATTRITION_REASON_ORDER):
        if key in text:
            return rank
    return len(ATTRITION_REASON_ORDER)


def _data_quality_section(con: duckdb.DuckDBPyConnection, schema: str) -> str:
    if not _table_exists(con, schema, "data_quality"):
        return "<p>Table data_quality is not present.</p>"
    rows_in = _query(
        con,
        "SELECT export_id, status, table_name, rows_read, rows_accepted, rows_quarantined, "
        "rows_duplicate, blocked, blocking_reason, CAST(exported_at AS VARCHAR) AS exported_at, "
        "CAST(validated_at AS VARCHAR) AS validated_at "
        f"FROM {_tbl(schema, 'data_quality')} ORDER BY export_id, table_name NULLS FIRST",
    )
    if not rows_in:
        return "<p>No exports seen.</p>"
    cols = ["export_id", "status", "table_name", "rows_read", "rows_accepted",
            "rows_quarantined", "rows_duplicate", "blocked", "blocking_reason", "exported_at",
            "validated_at"]
    rows = [[_fmt_plain(r[c]) for c in cols] for r in rows_in]
    headers = ["Export", "Status", "Table", "Rows read", "Accepted", "Quarantined", "Duplicate",
               "Blocked", "Blocking reason", "Exported at", "Validated at"]
    note = ('<p class="note">Operational row counts of every export seen (no patient '
            "attribute; not subject to cell suppression).</p>")
    return _html_table(headers, rows, numeric=range(3, 7)) + note


def _safety_section(con: duckdb.DuckDBPyConnection, schema: str) -> str | None:
    """None unless marts.safety_events exists and has rows (adverse events were exported)."""
    if not _table_exists(con, schema, "safety_events"):
        return None
    rows_in = _query(con, f"SELECT * FROM {_tbl(schema, 'safety_events')}")
    if not rows_in:
        return None
    ind_order = _order_indications({r["indication"] for r in rows_in})
    rows_in.sort(key=lambda r: (ind_order.index(r["indication"]), str(r["event"]),
                                str(r["route"]), str(r["dose_band"])))

    # Overall per indication x event: session and event counts are always published, so their
    # sums over routes and dose bands are too. Patient counts are not summed: a patient can have
    # sessions in several cells, and a withheld cell must not be recovered from a total.
    totals: dict[tuple[str, str], list[int]] = {}
    for r in rows_in:
        t = totals.setdefault((r["indication"], r["event"]), [0, 0, 0])
        t[0] += int(r["n_sessions"] or 0)
        t[1] += int(r["n_events"] or 0)
        t[2] += int(r["n_serious"] or 0)
    overall_rows = [
        [ind, ev, str(s), str(e), f"{100 * e / s:.1f}" if s else NOT_AVAILABLE, str(ser)]
        for (ind, ev), (s, e, ser) in totals.items()
    ]
    overall = _html_table(
        ["Indication", "Event", "Sessions", "Events", "Events per 100 sessions", "Serious"],
        overall_rows, numeric=(2, 3, 4, 5),
    )
    detail_rows = []
    for r in rows_in:
        s = bool(r["suppressed"])
        per100 = r["events_per_100_sessions"]
        detail_rows.append([
            r["indication"], r["event"], _fmt_plain(r["route"]), _fmt_plain(r["dose_band"]),
            _fmt_count(r["n_sessions"], s), _fmt_count(r["n_events"], s),
            f"{per100:.1f}" if per100 is not None else (WITHHELD if s else NOT_AVAILABLE),
            _fmt_count(r["n_patients"], s), _fmt_count(r["n_patients_with_event"], s),
            fmt_rate_ci(r["patient_event_rate"], r["patient_event_ci_low"],
                        r["patient_event_ci_high"], s),
            _fmt_count(r["n_serious"], s),
        ])
    detail = _html_table(
        ["Indication", "Event", "Route", "Dose band (mg/kg)", "Sessions", "Events",
         "Events per 100 sessions", "Patients", "Patients with event",
         "Patient event rate (95 % CI, Wilson)", "Serious"],
        detail_rows, numeric=range(4, 11),
    )
    return (
        "<h3>Overall, over routes and dose bands</h3>\n" + overall
        + '<p class="note">Events per 100 sessions = sum of events / sum of sessions. Patient '
          "rates are per route and dose band below (patients can appear in several cells).</p>"
        + "\n<h3>By route and dose band of the preceding session</h3>\n" + detail
    )


def render_html_report(
    con: duckdb.DuckDBPyConnection,
    out_path: Path,
    plots: dict[str, Path],
    schema: str = "marts",
    title: str = "Ketamine outcomes report",
) -> Path:
    """Write one self-contained HTML file (inline CSS, embedded PNGs) and return its path.

    Self-contained so it can be mailed and archived with the run; no script and no external
    reference, so opening it contacts nobody. Every string from the marts goes through
    ``html.escape`` (export ids and blocking reasons come from the clinics' files).
    """
    out_path = Path(out_path)
    rr_all = (_query(con, f"SELECT * FROM {_tbl(schema, 'response_rates')}")
              if _table_exists(con, schema, "response_rates") else [])
    ttr_all = (_query(con, f"SELECT * FROM {_tbl(schema, 'time_to_response')}")
               if _table_exists(con, schema, "time_to_response") else [])
    indications = _order_indications(
        {r["indication"] for r in rr_all} | {r["indication"] for r in ttr_all} | set(plots)
    )
    meta = _header_values(con, schema)

    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        '<p class="meta">',
    ]
    for key, label in (("run_id", "Run"), ("built_at", "Built at (UTC)"),
                       ("definition_version", "Outcome definitions")):
        vals = ", ".join(meta[key]) if meta[key] else NOT_AVAILABLE
        parts.append(f"{_e(label)}: <code>{_e(vals)}</code><br>")
    parts.append("</p>")
    parts.append(
        '<p class="note">Aggregates from the published marts only. '
        f"{_e(WITHHELD)} = {_e(WITHHELD_NOTE)}, or withheld so that such a cell cannot be "
        "recovered by subtraction (complementary suppression).</p>"
    )
    if indications:
        parts.append("<p>Indications: " + " &middot; ".join(
            f'<a href="#ind-{_e(_safe_filename(i))}">{_e(i)}</a>' for i in indications
        ) + "</p>")

    for ind in indications:
        rr = [r for r in rr_all if r["indication"] == ind]
        ttr = [r for r in ttr_all if r["indication"] == ind]
        parts.append(
            f'<h2 id="ind-{_e(_safe_filename(ind))}">{_e(ind)}: '
            f"{_e(_indication_meaning(ind))}</h2>"
        )
        parts.append("<h3>Response and remission</h3>")
        parts.append(_rates_section(ind, rr))
        parts.append("<h3>Time to first response</h3>")
        parts.append(_ttr_section(ind, ttr))
        plot = plots.get(ind)
        if plot is not None and Path(plot).is_file():
            data = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
            parts.append(
                f'<img class="km" alt="{_e("Kaplan-Meier cumulative response, " + ind)}" '
                f'src="data:image/png;base64,{data}">'
            )
        else:
            parts.append('<p class="note">No Kaplan-Meier curve published for this '
                         "indication.</p>")
        parts.append("<h3>Strata: response at end of induction (ITT)</h3>")
        parts.append(_strata_section(ind, rr))

    parts.append('<h2>Comparisons across indications <span class="badge">exploratory</span>'
                 "</h2>")
    parts.append(_tests_section(con, schema))
    parts.append("<h2>Attrition</h2>")
    parts.append('<p class="note">Why patients are not in each analysis (first reason that '
                 "applies).</p>")
    parts.append(_attrition_section(con, schema))
    safety = _safety_section(con, schema)
    if safety is not None:
        parts.append("<h2>Safety: adverse events</h2>")
        parts.append(safety)
    parts.append("<h2>Data quality</h2>")
    parts.append(_data_quality_section(con, schema))
    parts.append("</body></html>\n")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(parts), encoding="utf-8")
    return out_path


# ---------------------------------------------------------------------------------------------
# Terminal summary


def summary_lines(con: duckdb.DuckDBPyConnection, schema: str = "marts") -> list[str]:
    """Aligned plain-text table, one line per indication (primary instrument only).

    What ``make run`` prints at the end so the person running it sees at a glance whether the
    numbers are plausible, without opening the report.
    """
    rr = {
        (r["indication"], r["instrument"]): r
        for r in (_query(
            con,
            f"SELECT * FROM {_tbl(schema, 'response_rates')} WHERE endpoint = 'end_of_induction' "
            "AND population = 'ITT' AND stratum = 'overall'",
        ) if _table_exists(con, schema, "response_rates") else [])
    }
    ttr = _overall_ttr(con, schema)
    indications = _order_indications({k[0] for k in rr} | {k[0] for k in ttr})
    header = ["Indication", "Instrument", "n (ITT)", "Response EOI (95 % CI)",
              "Median days to response"]
    table: list[list[str]] = []
    for ind in indications:
        instr = _primary_instrument(ind)
        if instr is None:  # not in the vocabulary: pick what the marts have, deterministically
            instr = min(k[1] for k in list(rr) + list(ttr) if k[0] == ind)
        r = rr.get((ind, instr))
        t = ttr.get((ind, instr))
        if r is not None:
            s = bool(r["suppressed"])
            n = _fmt_count(r["n_patients"], s)
            rate = fmt_rate_ci(r["response_rate"], r["response_ci_low"], r["response_ci_high"], s)
        else:
            n = rate = NOT_AVAILABLE
        median = (fmt_median(t["median_days"], None, None, bool(t["suppressed"]), with_ci=False)
                  if t is not None else NOT_AVAILABLE)
        table.append([ind, instr, n, rate, median])
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    right = {2, 3, 4}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in table]
    if any(WITHHELD in c for row in table for c in row):
        out.append(f"{WITHHELD} {WITHHELD_NOTE}")
    return out
