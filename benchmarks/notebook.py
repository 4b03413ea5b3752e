"""NOTEBOOK: what an analyst would write instead of the pipeline (pandas + statsmodels).

Read every export with ``pandas.read_csv`` / ``read_parquet`` (types inferred), keep the
last export's row per natural key, derive baseline / endpoint / follow-up with ``groupby``,
overall-stratum rates with Wilson CIs (statsmodels ``proportion_confint``) and Kaplan-Meier
with statsmodels ``SurvfuncRight`` (median, its CI, landmarks). No validation beyond what
pandas does while parsing, no adverse events (an outcomes analyst does not need them), no
strata: this is the least an analyst would do to get the headline numbers.

Thresholds are compared on integer tenths of a point (outcomes.md "Exact arithmetic":
``100 * (baseline - score) >= P * baseline`` in doubles gets NRS 7.0 -> 4.9 wrong).

    python benchmarks/notebook.py LANDING_DIR OUT_JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.duration.survfunc import SurvfuncRight
from statsmodels.stats.proportion import proportion_confint

# outcomes.md v1 defaults: instrument -> (response % reduction, remission max, min baseline)
THRESHOLDS = {
    "MADRS": (50, 10, 20), "PHQ9": (50, 4, 10), "GAD7": (50, 4, 10),
    "LSAS": (30, 30, 60), "YBOCS": (35, 12, 16), "NRS_PAIN": (30, 3, 4),
}
PRIMARY = {"MDD": "MADRS", "GAD": "GAD7", "SAD": "LSAS", "OCD": "YBOCS", "CRPS": "NRS_PAIN",
           "DPN": "NRS_PAIN"}
SECONDARY = ["PHQ9"]
BASELINE, ENDPOINT, FOLLOWUP = (-14, 0), (21, 35), (1, 84)
LANDMARKS = (1, 7, 14, 28, 84)


def read_table(landing: Path, table: str) -> pd.DataFrame:
    frames = []
    for folder in sorted(p for p in landing.iterdir() if p.is_dir()):
        for ext in ("csv", "csv.gz", "parquet"):
            path = folder / f"{table}.{ext}"
            if path.exists():
                df = pd.read_parquet(path) if ext == "parquet" else pd.read_csv(path)
                df["export_id"] = folder.name
                frames.append(df)
    return pd.concat(frames, ignore_index=True)


def current(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """Supersession: the row of the export that sorts last, per natural key."""
    return df.sort_values("export_id", kind="stable").drop_duplicates(key, keep="last")


def last_in_window(a: pd.DataFrame, window: tuple[int, int], name: str) -> pd.DataFrame:
    w = a[a["day"].between(*window)].sort_values("day")
    return (w.groupby(["patient_id", "instrument"], as_index=False).last()
            [["patient_id", "instrument", "s10"]].rename(columns={"s10": name}))


def km_numbers(time_: np.ndarray, event: np.ndarray) -> dict:
    sf = SurvfuncRight(time_, event)
    median = sf.quantile(0.5)
    low, high = sf.quantile_ci(0.5, method="cloglog")
    out = {
        "n_patients": int(len(time_)), "n_responders": int(event.sum()),
        "n_censored": int(len(time_) - event.sum()),
        "median_days": None if np.isnan(median) else float(median),
        "median_ci_low": None if not np.isfinite(low) else float(low),
        "median_ci_high": None if not np.isfinite(high) else float(high),
        "max_followup_day": int(time_.max()),
    }
    for day in LANDMARKS:
        idx = np.searchsorted(sf.surv_times, day, side="right") - 1
        s = sf.surv_prob[idx] if idx >= 0 else 1.0
        out[f"cum_response_d{day}"] = None if day > time_.max() else float(1 - s)
    return out


def main(argv: list[str]) -> int:
    landing, out = Path(argv[0]), Path(argv[1])
    phases: dict[str, list[float]] = {}

    t0 = time.time()
    patients = read_table(landing, "patients")
    treatments = read_table(landing, "treatments")
    assessments = read_table(landing, "assessments")
    phases["read"] = [t0, time.time()]

    t0 = time.time()
    patients = current(patients.drop_duplicates(), ["patient_id"])
    treatments = current(treatments.drop_duplicates(), ["patient_id", "day", "session_number"])
    assessments = current(assessments.drop_duplicates(), ["patient_id", "instrument", "day"])
    phases["validate"] = [t0, time.time()]

    t0 = time.time()
    a = assessments[["patient_id", "instrument", "day"]].copy()
    a["s10"] = (assessments["score"] * 10).round().astype("int64")  # exact tenths
    th = pd.DataFrame([(k, *v) for k, v in THRESHOLDS.items()],
                      columns=["instrument", "pct", "rem_max", "min_base"])
    th[["rem_max", "min_base"]] *= 10
    pairs = patients[["patient_id", "indication"]].assign(
        instrument=patients["indication"].map(PRIMARY))
    for sec in SECONDARY:
        has = a.loc[a["instrument"] == sec, "patient_id"].unique()
        extra = patients.loc[patients["patient_id"].isin(has), ["patient_id", "indication"]]
        extra = extra[extra["indication"].map(PRIMARY) != sec].assign(instrument=sec)
        pairs = pd.concat([pairs, extra], ignore_index=True)
    n_admin = treatments.groupby("patient_id").size().rename("n_admin").reset_index()
    base = last_in_window(a, BASELINE, "b10")
    end = last_in_window(a, ENDPOINT, "e10")
    fu = a[a["day"].between(*FOLLOWUP)].merge(base, on=["patient_id", "instrument"], how="left")
    fu = fu.merge(th, on="instrument")
    fu["resp"] = (fu["b10"] > 0) & (100 * (fu["b10"] - fu["s10"]) >= fu["pct"] * fu["b10"])
    fu["rem"] = fu["s10"] <= fu["rem_max"]
    fu["resp_day"] = fu["day"].where(fu["resp"])
    fu = fu.groupby(["patient_id", "instrument"], as_index=False).agg(
        last_day=("day", "max"), any_resp=("resp", "any"), any_rem=("rem", "any"),
        first_resp=("resp_day", "min"))
    df = (pairs.merge(th, on="instrument").merge(n_admin, on="patient_id", how="left")
          .merge(base, on=["patient_id", "instrument"], how="left")
          .merge(end, on=["patient_id", "instrument"], how="left")
          .merge(fu, on=["patient_id", "instrument"], how="left"))
    df["itt"] = (df["b10"] > 0) & (df["b10"] >= df["min_base"]) & (df["n_admin"].fillna(0) >= 1)
    df["has_end"] = df["e10"].notna()
    df["end_resp"] = 100 * (df["b10"] - df["e10"]) >= df["pct"] * df["b10"]
    df["end_rem"] = df["e10"] <= df["rem_max"]
    df["has_fu"] = df["last_day"].notna()
    ev = df[df["itt"] & df["has_fu"]].copy()
    ev["event"] = ev["first_resp"].notna()
    ev["time"] = ev["first_resp"].fillna(ev["last_day"])
    responders = ev[ev["event"]][["patient_id", "indication", "instrument", "first_resp"]]
    sess = responders.merge(treatments[["patient_id", "day"]], on="patient_id", how="left")
    sess["before"] = sess["day"] < sess["first_resp"]
    sessions = sess.groupby(["patient_id", "instrument"], as_index=False).agg(
        indication=("indication", "first"), first_resp=("first_resp", "first"),
        sessions=("before", "sum"))
    phases["derive"] = [t0, time.time()]

    t0 = time.time()
    rates, km = [], []
    for (indication, instrument), g in df.groupby(["indication", "instrument"]):
        itt = g[g["itt"]]
        for endpoint, has, resp, rem in (("end_of_induction", "has_end", "end_resp", "end_rem"),
                                         ("ever", "has_fu", "any_resp", "any_rem")):
            evaluable = itt[itt[has]]
            k = int(evaluable[resp].astype(bool).sum())
            k_rem = int(evaluable[rem].astype(bool).sum())
            for population, n in (("ITT", len(itt)), ("evaluable", len(evaluable))):
                low, high = proportion_confint(k, n, method="wilson") if n else (None, None)
                rates.append({"indication": indication, "instrument": instrument,
                              "endpoint": endpoint, "population": population, "n_patients": n,
                              "n_responders": k, "n_remitters": k_rem,
                              "response_rate": k / n if n else None,
                              "response_ci_low": low, "response_ci_high": high,
                              "remission_rate": k_rem / n if n else None})
        e = ev[(ev["indication"] == indication) & (ev["instrument"] == instrument)]
        if len(e):
            row = {"indication": indication, "instrument": instrument,
                   **km_numbers(e["time"].to_numpy(float), e["event"].to_numpy(int))}
            s = sessions[(sessions["indication"] == indication)
                         & (sessions["instrument"] == instrument)]
            if len(s):
                q1, q2, q3 = np.quantile(s["first_resp"].to_numpy(float), [0.25, 0.5, 0.75])
                row.update(responders_q1_days=q1, responders_median_days=q2,
                           responders_q3_days=q3,
                           responders_median_sessions=float(np.median(s["sessions"])))
            km.append(row)
    phases["summarise"] = [t0, time.time()]
    out.write_text(json.dumps({"phases": phases, "rates": rates, "km": km}, indent=1,
                              default=lambda v: v.item() if hasattr(v, "item") else str(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
