"""Deterministic, fast and clinically plausible sample exports (format v1).

Why this exists: the pipeline needs landing data that looks like what clinics really send
(several overlapping snapshot-ish exports, all three file formats, realistic schedules,
dropout and response patterns) for demos, tests and load tests -- without any real patient
data. Everything here follows ``/work/shared/specs/exports.md`` (format) and
``outcomes.md`` (clinical definitions): every row is valid, every natural key is unique per
export, and nothing resembles a direct identifier (no e-mail, SSN, phone or calendar date in
any string column).

How it stays fast: patients are simulated in fixed-size chunks with numpy arrays shaped
``(patients, visit slots)``; rows are the ``np.nonzero`` of a mask, so there is no Python loop
per patient or per row (loops run over chunks, exports, tables and small enums only).
One million patients take well under a minute and a few hundred MB of memory because each
chunk is streamed into the export files (CSV / gzip / Parquet row groups) and then dropped.

How it stays deterministic: the chunk size is a constant and each chunk draws from its own
``numpy`` generator seeded by ``(seed, chunk number)``; gzip members are written with
``mtime=0`` and no file name; Parquet output has no timestamps. Same arguments -> same bytes.

How the outcome rates are controlled: the end-of-induction response (outcomes.md: the LAST
assessment of the primary instrument in days [21, 35], ``100*(baseline-score) >= P*baseline``)
is assigned by stratified sampling within indication x site among patients that are
evaluable and have an endpoint assessment, and scores are then generated on the correct side
of the exact integer cut-off (NRS in tenths). The measured rates therefore sit within a
fraction of a percent of ``TARGET_RESPONSE`` (plus small site effects) for any seed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

IntArray = np.ndarray[Any, np.dtype[np.int64]]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]

# ---------------------------------------------------------------------------------------------
# Vocabularies of the export spec (codes are indexes into these tuples)
# ---------------------------------------------------------------------------------------------
SOURCE = "network"
FORMATS: tuple[str, ...] = ("csv", "csv.gz", "parquet")
TABLES: tuple[str, ...] = ("patients", "treatments", "assessments", "adverse_events")
INDICATIONS: tuple[str, ...] = ("MDD", "GAD", "SAD", "OCD", "CRPS", "DPN")
INSTRUMENTS: tuple[str, ...] = ("MADRS", "GAD7", "LSAS", "YBOCS", "NRS_PAIN", "PHQ9")
SEXES: tuple[str, ...] = ("F", "M", "X", "U")
AGE_BANDS: tuple[str, ...] = ("18-24", "25-34", "35-44", "45-54", "55-64", "65-74", "75-89", "90+")
ROUTES: tuple[str, ...] = ("IV", "IM", "IN", "SC", "ORAL", "SL", "TOPICAL")
# fmt: off
EVENTS: tuple[str, ...] = (
    "DISSOCIATION", "HYPERTENSION", "NAUSEA_VOMITING", "SEDATION", "ANXIETY_AGITATION",
    "HEADACHE", "DIZZINESS", "URINARY", "OTHER",
)
# fmt: on
SEVERITIES: tuple[str, ...] = ("MILD", "MODERATE", "SEVERE")
N_SITES = 6
SITES: tuple[str, ...] = tuple(f"site_{i:02d}" for i in range(1, N_SITES + 1))

MDD, GAD, SAD, OCD, CRPS, DPN = range(6)
MADRS, GAD7, LSAS, YBOCS, NRS, PHQ9 = range(6)
IV, IM, IN, SC, ORAL, SL, TOPICAL = range(7)

# ---------------------------------------------------------------------------------------------
# Clinical parameters. Scores are handled in integer "units": points, NRS in tenths.
# ---------------------------------------------------------------------------------------------
PRIMARY = np.array([MADRS, GAD7, LSAS, YBOCS, NRS, NRS])  # primary instrument per indication
INST_MAX = np.array([60, 21, 144, 40, 100, 27])  # range maximum, units
INST_MIN_EVAL = np.array([20, 10, 60, 16, 40, 10])  # outcomes.md minimum baseline, units
INST_THR = np.array([50, 50, 30, 35, 30, 50])  # response threshold P (% reduction)
BASE_MEAN = np.array([33.0, 15.5, 88.0, 27.0, 72.0, 18.5])
BASE_SD = np.array([6.0, 3.0, 17.0, 5.0, 13.0, 4.0])
BASE_HI = np.array([56, 21, 140, 40, 100, 27])
#: end-of-induction response among evaluable patients with an endpoint, per indication
TARGET_RESPONSE = np.array([0.50, 0.45, 0.35, 0.275, 0.525, 0.25])

IND_W = np.array([0.45, 0.12, 0.07, 0.08, 0.16, 0.12])
SITE_W = np.array([0.26, 0.20, 0.17, 0.15, 0.12, 0.10])
#: small between-site differences so per-site marts are not all identical (weighted mean ~0)
SITE_OFFSET = np.array([0.04, -0.03, 0.02, -0.04, 0.01, -0.02])
# fmt: off  (parameter tables read best as matrices)
SEX_W = np.array(
    [
        [0.60, 0.38, 0.01, 0.01],
        [0.64, 0.34, 0.01, 0.01],
        [0.52, 0.46, 0.01, 0.01],
        [0.52, 0.46, 0.01, 0.01],
        [0.72, 0.26, 0.01, 0.01],
        [0.45, 0.53, 0.01, 0.01],
    ]
)
_AGE_PSY = [0.09, 0.22, 0.23, 0.20, 0.15, 0.08, 0.028, 0.002]
_AGE_YOUNG = [0.15, 0.30, 0.24, 0.16, 0.09, 0.04, 0.009, 0.001]
AGE_W = np.array(
    [
        _AGE_PSY,
        _AGE_PSY,
        _AGE_YOUNG,
        _AGE_YOUNG,
        [0.04, 0.15, 0.22, 0.25, 0.20, 0.10, 0.038, 0.002],
        [0.005, 0.03, 0.08, 0.18, 0.30, 0.27, 0.13, 0.005],
    ]
)
#: route mix per indication (IV dominant; IN = esketamine for MDD)
ROUTE_W = np.array(
    [
        [0.60, 0.06, 0.25, 0.02, 0.04, 0.03, 0.00],
        [0.70, 0.10, 0.05, 0.03, 0.05, 0.07, 0.00],
        [0.70, 0.10, 0.05, 0.02, 0.05, 0.08, 0.00],
        [0.84, 0.08, 0.00, 0.02, 0.04, 0.02, 0.00],
        [0.86, 0.03, 0.00, 0.04, 0.03, 0.00, 0.04],
        [0.60, 0.05, 0.00, 0.05, 0.15, 0.00, 0.15],
    ]
)
#: adverse-event probability per session, rows = route, columns = EVENTS
AE_P = np.array(
    [
        [0.25, 0.06, 0.07, 0.05, 0.03, 0.05, 0.06, 0.003, 0.01],
        [0.28, 0.06, 0.08, 0.06, 0.03, 0.05, 0.06, 0.003, 0.01],
        [0.30, 0.08, 0.10, 0.07, 0.03, 0.06, 0.10, 0.002, 0.01],
        [0.18, 0.04, 0.06, 0.05, 0.02, 0.04, 0.05, 0.002, 0.01],
        [0.05, 0.01, 0.06, 0.06, 0.02, 0.03, 0.04, 0.005, 0.01],
        [0.07, 0.01, 0.05, 0.06, 0.02, 0.03, 0.04, 0.005, 0.01],
        [0.00, 0.00, 0.00, 0.005, 0.00, 0.005, 0.005, 0.00, 0.01],
    ],
    dtype=np.float32,
)
#: continuous (inpatient, >= 8 h) CRPS infusion days: more nausea, dreams/hallucinations (OTHER)
AE_P_CONTINUOUS = np.array([0.30, 0.05, 0.15, 0.10, 0.04, 0.08, 0.05, 0.02, 0.05], dtype=np.float32)
# fmt: on
AE_TABLE = np.vstack([AE_P, AE_P_CONTINUOUS])  # row = route code, or len(ROUTES) = continuous

#: follow-up visits: nominal day, jitter, attendance probability, how much of the eventual
#: partial improvement is already present (ketamine acts within a day, so the ramp is short)
FU_DAYS = np.array([1, 3, 7, 14, 21, 28] + [56 + 28 * k for k in range(24)])
FU_JIT_LO = np.array([0, -1, -1, -1, -1, -1] + [-4] * 24)
FU_JIT_HI = np.array([0, 1, 1, 1, 2, 3] + [4] * 24)
FU_ATTEND = np.array([0.60, 0.55, 0.88, 0.88, 0.78, 0.90] + [0.88] * 24)
FU_RAMP = np.array([0.55, 0.65, 0.80, 0.90, 1.0, 1.0] + [1.0] * 24)
N_FU = len(FU_DAYS)
N_IND_SLOTS = 8  # esketamine: 8 induction sessions; others 6; CRPS multi-day 3-5
N_MAINT = 25  # monthly maintenance sessions, day 35 + 28 j (+-3) <= 710
ONSET_W = np.array([0.25, 0.20, 0.22, 0.18, 0.10, 0.05])  # first responding follow-up slot

# calendar: patients start over 18 months; the last export is 6 months after the last start;
# the first export is cut when ~60 % have started; later exports re-send a 6-week overlap.
T_ENROL = 540.0
FOLLOW_AFTER = 180.0
FIRST_SHARE = 0.6
LOOKBACK = 42.0
LAST_EXPORT_AT = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
CHUNK = 65_536  # constant: the random streams (and so the bytes) depend on it

# ---------------------------------------------------------------------------------------------
# Output schemas (Parquet types; CSV writes the same columns as text)
# ---------------------------------------------------------------------------------------------
# fmt: off
SCHEMAS: dict[str, pa.Schema] = {
    "patients": pa.schema([
        ("patient_id", pa.string()), ("site_id", pa.string()), ("indication", pa.string()),
        ("sex", pa.string()), ("age_band", pa.string()),
    ]),
    "treatments": pa.schema([
        ("patient_id", pa.string()), ("day", pa.int32()), ("session_number", pa.int32()),
        ("route", pa.string()), ("dose_mg", pa.float64()), ("dose_mg_per_kg", pa.float64()),
        ("duration_min", pa.int32()),
    ]),
    "assessments": pa.schema([
        ("patient_id", pa.string()), ("instrument", pa.string()), ("day", pa.int32()),
        ("score", pa.float64()),
    ]),
    "adverse_events": pa.schema([
        ("patient_id", pa.string()), ("day", pa.int32()), ("event", pa.string()),
        ("severity", pa.string()), ("serious", pa.bool_()),
    ]),
}


# fmt: on
# ---------------------------------------------------------------------------------------------
# Small vectorised helpers
# ---------------------------------------------------------------------------------------------
def _pick_rows(rng: np.random.Generator, weights: FloatArray) -> IntArray:
    """Draw one category per row of ``weights`` (n x k), so each patient can have its own mix."""
    cdf = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cdf[:, -1]
    return np.minimum((u[:, None] >= cdf).sum(axis=1), weights.shape[1] - 1).astype(np.int64)


def _pick(rng: np.random.Generator, weights: Sequence[float] | FloatArray, n: int) -> IntArray:
    """Draw ``n`` categories from one weight vector (inverse CDF; faster than ``choice``)."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    idx = np.searchsorted(cdf / cdf[-1], rng.random(n), side="right")
    return np.minimum(idx, len(cdf) - 1).astype(np.int64)


GRAN = np.array([10, 5, 1])  # NRS recorded in whole points, halves or tenths


def _quantize(rng: np.random.Generator, units: IntArray, is_nrs: BoolArray, up: bool) -> IntArray:
    """Snap NRS tenths to whole points (65 %), halves (25 %) or leave tenths (10 %).

    Rounding goes away from the response cut-off (down for responses, up for
    non-responses), so the status decided before quantisation is kept exactly.
    """
    gran = np.ones_like(units)
    nrs = np.flatnonzero(is_nrs)
    gran[nrs] = GRAN[_pick(rng, [0.65, 0.25, 0.10], nrs.size)]
    if up:
        return -((-units) // gran) * gran
    return (units // gran) * gran


def _patient_ids(index: IntArray, seed: int) -> pl.Series:
    """Pseudonyms ``P`` + 9 chars, unique by construction, reproducible for a seed.

    A keyed bijection on 43 bits (add / odd multiply / xorshift, all invertible mod 2^43)
    scrambles the patient index; the result is written in a mixed radix whose positions
    0, 3 and 6 use letters only, so an id never holds more than two digits in a row and can
    never resemble an SSN, phone number or date (there are no separators either).
    """
    mask = np.uint64((1 << 43) - 1)
    k0, k1 = np.random.SeedSequence([seed, 0x1D]).generate_state(2, dtype=np.uint64)
    x = (index.astype(np.uint64) + k0) & mask
    with np.errstate(over="ignore"):
        x = (x * np.uint64(0x5DEECE66D | 1)) & mask
        x ^= x >> np.uint64(19)
        x = (x * np.uint64(0x2545F4914F6CDD1D & ((1 << 43) - 1) | 1)) & mask
        x ^= x >> np.uint64(23)
        x = (x + k1) & mask
    letters = np.frombuffer(b"ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)  # Crockford, no I L O U
    full = np.frombuffer(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ", dtype=np.uint8)
    chars = np.empty((len(index), 10), dtype=np.uint8)
    chars[:, 0] = ord("P")
    for pos in range(9, 0, -1):  # loop over the 9 character positions, not over patients
        alphabet = letters if (pos - 1) % 3 == 0 else full
        radix = np.uint64(len(alphabet))
        chars[:, pos] = alphabet[(x % radix).astype(np.int64)]
        x //= radix
    return pl.Series("patient_id", chars.view("S10").ravel()).cast(pl.String)


def _strings(values: Sequence[str], codes: IntArray, name: str) -> pl.Series:
    """Turn integer codes into a string column via a gather (fast, no Python per row)."""
    return pl.Series(name, list(values), dtype=pl.String).gather(codes)


# ---------------------------------------------------------------------------------------------
# Simulation of one chunk of patients
# ---------------------------------------------------------------------------------------------
class _Chunk:
    """Arrays of one chunk of patients and their row-level tables (codes, not strings)."""

    def __init__(self) -> None:
        self.pid: pl.Series = pl.Series(dtype=pl.String)
        self.start: IntArray = np.zeros(0, dtype=np.int64)
        self.patients: dict[str, IntArray] = {}
        self.tables: dict[str, dict[str, np.ndarray[Any, Any]]] = {}


def _baselines(rng: np.random.Generator, inst: IntArray, z: FloatArray) -> IntArray:
    """Baseline severity in units: ~96 % evaluable, ~3.5 % below the minimum, 0.4 % zero."""
    n = len(inst)
    lo = INST_MIN_EVAL[inst]
    evaluable = np.clip(np.rint(BASE_MEAN[inst] + BASE_SD[inst] * z), lo, BASE_HI[inst])
    below = rng.integers(np.ceil(lo * 0.45).astype(np.int64), lo)
    u = rng.random(n)
    b = np.where(u < 0.004, 0, np.where(u < 0.039, below, evaluable)).astype(np.int64)
    return _quantize(rng, b, inst == NRS, up=False)


def _perturbed(rng: np.random.Generator, b: IntArray, inst: IntArray) -> IntArray:
    """A nearby rating (screening visit or an old rating) of the same patient."""
    v = np.rint(b + rng.normal(0.0, 0.07, len(b)) * INST_MAX[inst]).astype(np.int64)
    return _quantize(rng, np.clip(v, 0, INST_MAX[inst]), inst == NRS, up=False)


def _followup_scores(
    rng: np.random.Generator,
    inst: IntArray,
    b: IntArray,
    meets: BoolArray,
    part: FloatArray,
    depth: FloatArray,
    ramp: FloatArray,
) -> IntArray:
    """Scores (one per row) on the requested side of the exact response cut-off.

    ``cut = floor((100-P) * b / 100)`` is the largest score with
    ``100*(b-score) >= P*b``; responses are drawn in ``[0, cut]`` (6 % exactly at the cut,
    the boundary case exact arithmetic must get right), non-responses in
    ``[cut+1, max]`` from a partial-improvement trajectory (``part`` of the threshold,
    reached along ``ramp``; negative ``part`` = worsening).
    """
    thr = INST_THR[inst]
    cut = ((100 - thr) * b) // 100
    out = np.empty(len(inst), dtype=np.int64)
    m = np.flatnonzero(meets)
    cm = cut[m]
    d = np.clip(depth[m] + 0.08 * rng.standard_normal(m.size, dtype=np.float32), 0.0, 0.95)
    resp = _quantize(rng, np.floor(cm * (1.0 - d)).astype(np.int64), inst[m] == NRS, up=False)
    out[m] = np.where(rng.random(m.size, dtype=np.float32) < 0.06, cm, resp)
    q = np.flatnonzero(~meets)
    tq = thr[q] / 100.0
    r = part[q] * tq * ramp[q] + 0.06 * rng.standard_normal(q.size, dtype=np.float32)
    r = np.clip(r, -0.25, tq)
    lo, hi = cut[q] + 1, INST_MAX[inst[q]]
    nonresp = np.clip(np.ceil(b[q] * (1.0 - r)).astype(np.int64), lo, hi)
    out[q] = np.clip(_quantize(rng, nonresp, inst[q] == NRS, up=True), lo, hi)
    return out


def _stratified_status(
    rng: np.random.Generator, eligible: BoolArray, group: IntArray, p: FloatArray
) -> BoolArray:
    """Bernoulli(p), but stratified within each group among ``eligible`` patients.

    Sorting the eligible patients of a group in random order and giving the k-th of n the
    uniform ``(k + U)/n`` makes the number of responders ``p*n`` up to one, so the measured
    end-of-induction rates do not wobble with the seed or the sample size.
    """
    status = rng.random(len(p)) < p
    idx = np.flatnonzero(eligible)
    if idx.size:
        order = idx[np.lexsort((rng.random(idx.size), group[idx]))]
        g = group[order]
        counts = np.bincount(g)
        first = np.cumsum(counts) - counts
        rank = np.arange(idx.size) - first[g]
        u = (rank + rng.random(idx.size)) / counts[g]
        status[order] = u < p[order]
    return status


def _simulate(
    rng: np.random.Generator, first: int, n: int, n_total: int, seed: int, horizon: float
) -> _Chunk:
    """Simulate patients ``first .. first+n-1``: attributes, treatments, ratings, events."""
    ch = _Chunk()
    ar = np.arange(n)
    index = np.arange(first, first + n, dtype=np.int64)
    ch.pid = _patient_ids(index, seed)
    # day 0 on the calendar: spread over the enrolment period in index order, so that the
    # first export holds the first ~60 % of patients
    ch.start = np.floor(T_ENROL * (index + rng.random(n)) / n_total).astype(np.int64)
    start = ch.start
    ind = _pick(rng, IND_W, n)
    site = _pick(rng, SITE_W, n)
    ch.patients = {
        "site": site,
        "ind": ind,
        "sex": _pick_rows(rng, SEX_W[ind]),
        "age": _pick_rows(rng, AGE_W[ind]),
    }
    treated = rng.random(n) >= 0.01  # ~1 % screened but never dosed ("no administration")
    weight = np.clip(rng.normal(82.0, 19.0, n), 45.0, 150.0)  # kg, not exported

    # ---- baseline ratings ----------------------------------------------------------------
    prim = PRIMARY[ind]
    phq = (ind == MDD) & (rng.random(n) < 0.40)
    z = rng.standard_normal(n)
    b = _baselines(rng, prim, z)
    b_phq = _baselines(rng, np.full(n, PHQ9), 0.6 * z + 0.8 * rng.standard_normal(n))
    no_base = rng.random(n) < 0.01  # no rating in [-14, 0]
    old = no_base & (rng.random(n) < 0.5)  # ... only an old one, outside the window
    old_day = rng.integers(-60, -14, n)
    u = rng.random(n)
    base_day = np.where(u < 0.72, 0, np.where(u < 0.82, -1, rng.integers(-7, -1, n)))
    screen = ~no_base & (rng.random(n) < 0.25)  # two baselines: the last one counts
    screen_day = base_day - rng.integers(2, 8, n)

    # ---- induction schedule ----------------------------------------------------------------
    route = _pick_rows(rng, ROUTE_W[ind])
    esk = treated & (ind == MDD) & (route == IN)
    multi = treated & (ind == CRPS) & (route == IV) & (rng.random(n) < 0.55)
    continuous = multi & (rng.random(n) < 0.55)
    planned = np.where(esk, 8, np.where(multi, rng.integers(3, 6, n), 6))
    std_days = np.column_stack(
        [
            np.zeros(n, np.int64),
            rng.integers(2, 5, n),
            np.full(n, 7),
            rng.integers(9, 12, n),
            np.full(n, 14),
            rng.integers(17, 22, n),
            np.zeros((n, 2), np.int64),
        ]
    )
    esk_days = np.array([0, 3, 7, 10, 14, 17, 21, 24]) + rng.integers(0, 2, (n, 8)) * (
        np.array([0, 1, 0, 1, 0, 1, 0, 1])
    )
    ind_days = np.where(
        esk[:, None], esk_days, np.where(multi[:, None], np.arange(N_IND_SLOTS), std_days)
    )
    u = rng.random(n)
    stop_first = treated & (u < 0.175)
    early = treated & (u >= 0.175) & (u < 0.275)
    n_att = np.where(stop_first, 1, np.where(early, rng.integers(2, planned), planned))
    n_att = np.where(treated, n_att, 0)
    completed = treated & ~stop_first & ~early
    last_ind_day = ind_days[ar, np.maximum(n_att - 1, 0)]
    h_first = np.array([1, 3, 7, 10, 35])[_pick(rng, [0.25, 0.2, 0.3, 0.1, 0.15], n)]
    horizon_fu = np.where(
        stop_first, h_first, np.where(early, last_ind_day + rng.integers(3, 15, n), 10_000)
    )

    # ---- follow-up visits and the endpoint ------------------------------------------------
    width = FU_JIT_HI - FU_JIT_LO + 1  # float32 u * width may round up to width: clamp
    jitter = (rng.random((n, N_FU), dtype=np.float32) * width).astype(np.int64)
    fu_day = FU_DAYS + FU_JIT_LO + np.minimum(jitter, width - 1)
    seen = (
        (rng.random((n, N_FU), dtype=np.float32) < FU_ATTEND)
        & treated[:, None]
        & (start[:, None] + fu_day <= horizon)
    )
    pre = seen & (fu_day <= horizon_fu[:, None])
    in_win = pre[:, 4:6] & (fu_day[:, 4:6] >= 21) & (fu_day[:, 4:6] <= 35)
    has_end = in_win.any(axis=1)
    end_slot = np.where(in_win[:, 1] | ~has_end, 5, 4)
    evaluable = treated & ~no_base & (b > 0) & (b >= INST_MIN_EVAL[prim])
    p = np.clip(TARGET_RESPONSE[ind] + SITE_OFFSET[site], 0.02, 0.98)
    responder = _stratified_status(rng, evaluable & has_end, ind * N_SITES + site, p)

    # response pattern over follow-up slots: meets = on <= slot < off
    on_r = np.minimum(_pick(rng, ONSET_W, n), end_slot)
    off_r = end_slot + 1 + rng.geometric(0.2, n)
    faded = ~responder & (rng.random(n) < 0.30)  # responded on day 1-14, lost it by endpoint
    on_f = np.minimum(_pick(rng, [0.35, 0.30, 0.35], n), end_slot - 1)
    off_f = rng.integers(on_f + 1, end_slot + 1)
    late = ~responder & ~faded & (rng.random(n) < 0.12)  # responds during maintenance
    on_l = end_slot + rng.geometric(0.3, n)
    off_l = on_l + rng.geometric(0.25, n)
    on = np.where(responder, on_r, np.where(faded, on_f, np.where(late, on_l, 99)))
    off = np.where(responder, off_r, np.where(faded, off_f, np.where(late, off_l, 99)))
    part = np.where(responder | faded, rng.uniform(0.45, 0.9, n), rng.uniform(-0.25, 0.85, n))
    depth = rng.beta(2.0, 2.2, n) * 0.95

    # ---- maintenance (more likely for responders) and the end of follow-up ---------------
    maint = completed & (rng.random(n) < np.where(responder, 0.72, 0.42))
    n_maint = np.minimum(rng.geometric(0.08, n), N_MAINT)
    m_day = 35 + 28 * np.arange(N_MAINT) + rng.integers(-3, 4, (n, N_MAINT))
    m_obs = maint[:, None] & (np.arange(N_MAINT) < n_maint[:, None])
    last_m = m_day[ar, n_maint - 1]
    h_done = np.where(maint, last_m + 14, 32 + 28 * (rng.geometric(0.08, n) - 1))
    horizon_fu = np.where(completed, h_done, horizon_fu)
    fu_obs = seen & (fu_day <= horizon_fu[:, None])

    # ---- assessments: 3 baseline slots (old, screening, baseline) + follow-ups ------------
    # The mask (patient, slot, primary/PHQ9) is flattened first so that rows come out in
    # patient / day / instrument order and scores are computed only for rows that exist.
    a_day = np.concatenate([np.column_stack([old_day, screen_day, base_day]), fu_day], axis=1)
    a_obs = np.concatenate([np.column_stack([old, screen, ~no_base]), fu_obs], axis=1)
    a_obs &= start[:, None] + a_day <= horizon
    phq_obs = a_obs & phq[:, None] & (rng.random(a_obs.shape, dtype=np.float32) >= 0.05)
    width = a_day.shape[1]
    flat = np.flatnonzero(np.stack([a_obs, phq_obs], axis=2))
    rows, rest = np.divmod(flat, 2 * width)
    cols, which = np.divmod(rest, 2)
    is_phq = which == 1
    inst_rows = np.where(is_phq, PHQ9, prim[rows])
    b_rows = np.where(is_phq, b_phq[rows], b[rows])
    units = np.empty(flat.size, dtype=np.int64)
    f = np.flatnonzero(cols >= 3)  # follow-up rows
    fr, fs = rows[f], cols[f] - 3
    meets = (fs >= on[fr]) & (fs < off[fr])
    meets ^= is_phq[f] & (rng.random(f.size, dtype=np.float32) < 0.12)  # PHQ9 agrees ~88 %
    units[f] = _followup_scores(
        rng, inst_rows[f], b_rows[f], meets, part[fr], depth[fr], FU_RAMP[fs]
    )
    g = np.flatnonzero(cols < 3)  # old / screening / baseline rows
    units[g] = np.where(cols[g] == 2, b_rows[g], _perturbed(rng, b_rows[g], inst_rows[g]))
    ch.tables["assessments"] = {
        "pidx": rows,
        "day": a_day.ravel()[rows * width + cols],
        "inst": inst_rows,
        "units": units,
    }

    # ---- treatments ------------------------------------------------------------------------
    t_day_m = np.concatenate([ind_days, m_day], axis=1)
    t_obs = np.concatenate([np.arange(N_IND_SLOTS) < n_att[:, None], m_obs], axis=1)
    t_obs &= start[:, None] + t_day_m <= horizon
    width = t_obs.shape[1]
    flat = np.flatnonzero(t_obs)
    r, s = np.divmod(flat, width)
    t_day = t_day_m.ravel()[flat]
    session = np.cumsum(t_obs, axis=1, dtype=np.int32).ravel()[flat]
    is_m = s >= N_IND_SLOTS
    k = np.where(is_m, n_att[r] - 1, s)  # dose level: maintenance stays at the last level
    rt = route[r]
    pain = ind[r] >= CRPS
    mgkg_std = np.round(
        np.minimum(
            1.0,
            np.array([0.5, 0.5, 0.6, 0.7, 0.75, 0.8])[_pick(rng, [1] * 6, n)][r]
            + np.array([0.0, 0.05, 0.1])[_pick(rng, [1] * 3, n)][r] * k,
        ),
        2,
    )
    dur_psy = np.where(rng.random(n) < 0.9, 40, np.array([45, 50, 60])[_pick(rng, [1] * 3, n)])
    dur_pain = np.array([60, 90, 120, 240])[_pick(rng, [0.2, 0.2, 0.3, 0.3], n)]
    # CRPS multi-day: daily 4-h outpatient infusions or a continuous inpatient infusion that
    # escalates daily up to 1.2 mg/kg/h (= 28.8 mg/kg on a full day); first/last day partial
    rate_out = rng.uniform(0.25, 0.5, n)
    rate_cont = np.minimum(1.2, rng.uniform(0.1, 0.5, n)[r] + 0.15 * k)
    first_min = rng.integers(480, 961, n)[r]
    last_min = rng.integers(360, 1081, n)[r]
    cont_min = np.where(s == 0, first_min, np.where(s == planned[r] - 1, last_min, 1440))
    is_cont = continuous[r] & ~is_m
    is_multi = multi[r]
    mgkg = np.where(
        is_cont,
        np.round(rate_cont * cont_min / 60.0, 2),
        np.where(is_multi, np.round(rate_out[r] * 4.0, 2), mgkg_std),
    )
    duration = np.where(
        is_cont, cont_min, np.where(is_multi, 240, np.where(pain, dur_pain[r], dur_psy[r]))
    )
    esk_dose = np.where((rng.random(n) < 0.7)[r] & (k >= 2), 84.0, 56.0)
    in_dose = np.array([50.0, 75.0, 100.0])[_pick(rng, [1] * 3, n)][r]
    oral_dose = np.array([50.0, 100.0, 150.0, 200.0, 250.0, 300.0])[_pick(rng, [1] * 6, n)][r]
    sl_dose = np.array([25.0, 50.0, 75.0, 100.0, 150.0])[_pick(rng, [1] * 5, n)][r]
    top_dose = np.array([np.nan, 25.0, 50.0, 100.0])[_pick(rng, [0.5, 0.15, 0.2, 0.15], n)][r]
    weighted = (rt == IV) | (rt == IM) | (rt == SC)
    dose_mg = np.where(weighted, np.round(mgkg * weight[r], 1), np.nan)
    dose_mg = np.where(rt == IN, np.where(esk[r], esk_dose, in_dose), dose_mg)
    dose_mg = np.where(rt == ORAL, oral_dose, np.where(rt == SL, sl_dose, dose_mg))
    dose_mg = np.where(rt == TOPICAL, top_dose, dose_mg)
    ch.tables["treatments"] = {
        "pidx": r,
        "day": t_day,
        "session": session,
        "route": rt,
        "dose_mg": dose_mg,
        "mgkg": np.where(weighted, mgkg, np.nan),
        "duration": np.where(rt == IV, duration, 0),
    }

    # ---- adverse events on session days -----------------------------------------------------
    # one Bernoulli column per event type (loop over the 9 events, not over rows)
    ae_kind = np.where(is_cont & (duration >= 480), len(ROUTES), rt)
    hit = np.empty((len(r), len(EVENTS)), dtype=bool)
    for e in range(len(EVENTS)):
        hit[:, e] = rng.random(len(r), dtype=np.float32) < AE_TABLE[ae_kind, e]
    er, ev = np.nonzero(hit)
    sev = _pick(rng, [0.72, 0.24, 0.04], len(er))
    serious = ((sev == 2) & (rng.random(len(er)) < 0.12)) | (rng.random(len(er)) < 0.0005)
    ch.tables["adverse_events"] = {
        "pidx": r[er],
        "day": t_day[er],
        "event": ev,
        "severity": sev,
        "serious": serious,
    }
    return ch


# ---------------------------------------------------------------------------------------------
# Export windows and frames
# ---------------------------------------------------------------------------------------------
def _export_times(n_exports: int) -> list[float]:
    """Calendar day of each export's cut-off: first at ~60 % enrolment, last after all."""
    last = T_ENROL + FOLLOW_AFTER
    if n_exports == 1:
        return [last]
    first = FIRST_SHARE * T_ENROL
    return [first + (last - first) * k / (n_exports - 1) for k in range(n_exports)]


#: every possible score as text and as float, indexed by units (+ offset for NRS tenths);
#: whole numbers print without a spurious ".0", NRS with its one decimal when it has one
_NRS_OFFSET = int(INST_MAX.max()) + 1
SCORE_TEXT: tuple[str, ...] = tuple(str(u) for u in range(_NRS_OFFSET)) + tuple(
    f"{t // 10}" if t % 10 == 0 else f"{t // 10}.{t % 10}" for t in range(101)
)
SCORE_FLOAT = np.array([float(t) for t in SCORE_TEXT])


def _score_column(units: IntArray, inst: IntArray, as_text: bool) -> pl.Series:
    """Score column via a lookup (text for CSV, float for Parquet): exact and fast."""
    code = np.where(inst == NRS, units + _NRS_OFFSET, units)
    if as_text:
        return _strings(SCORE_TEXT, code, "score")
    return pl.Series("score", SCORE_FLOAT[code])


def _frames(
    ch: _Chunk, lo: float, hi: float, as_text: bool, with_ae: bool
) -> dict[str, pl.DataFrame]:
    """Rows of one chunk whose calendar date falls in ``(lo, hi]``, as output frames."""
    frames: dict[str, pl.DataFrame] = {}
    present = np.zeros(len(ch.start), dtype=bool)
    for name in ("treatments", "assessments", "adverse_events"):
        if name == "adverse_events" and not with_ae:
            continue
        t = ch.tables[name]
        cal = ch.start[t["pidx"]] + t["day"]
        sel = np.flatnonzero((cal > lo) & (cal <= hi))
        pidx = t["pidx"][sel]
        present[pidx] = True
        pid = ch.pid.gather(pidx)
        day = pl.Series("day", t["day"][sel].astype(np.int32))
        if name == "treatments":
            dur = t["duration"][sel]
            frames[name] = pl.DataFrame(
                [
                    pid,
                    day,
                    pl.Series("session_number", t["session"][sel].astype(np.int32)),
                    _strings(ROUTES, t["route"][sel], "route"),
                    pl.Series("dose_mg", t["dose_mg"][sel], nan_to_null=True),
                    pl.Series("dose_mg_per_kg", t["mgkg"][sel], nan_to_null=True),
                    pl.Series(
                        "duration_min", np.where(dur > 0, dur, np.nan), nan_to_null=True
                    ).cast(pl.Int32),
                ]
            )
        elif name == "assessments":
            inst = t["inst"][sel]
            frames[name] = pl.DataFrame(
                [
                    pid,
                    _strings(INSTRUMENTS, inst, "instrument"),
                    day,
                    _score_column(t["units"][sel], inst, as_text),
                ]
            )
        else:
            frames[name] = pl.DataFrame(
                [
                    pid,
                    day,
                    _strings(EVENTS, t["event"][sel], "event"),
                    _strings(SEVERITIES, t["severity"][sel], "severity"),
                    pl.Series("serious", t["serious"][sel]),
                ]
            )
    pat = np.flatnonzero(present)
    frames["patients"] = pl.DataFrame(
        [
            ch.pid.gather(pat),
            _strings(SITES, ch.patients["site"][pat], "site_id"),
            _strings(INDICATIONS, ch.patients["ind"][pat], "indication"),
            _strings(SEXES, ch.patients["sex"][pat], "sex"),
            _strings(AGE_BANDS, ch.patients["age"][pat], "age_band"),
        ]
    )
    return frames


class _Sink:
    """One table file, written chunk by chunk (CSV, gzip'd CSV or Parquet row groups)."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema) -> None:
        self.fmt = fmt
        self.schema = schema
        self.rows = 0
        self._raw: IO[bytes] | None = None
        self._text: IO[bytes] | None = None
        self._pq: pq.ParquetWriter | None = None
        if fmt == "parquet":
            self._pq = pq.ParquetWriter(path, schema, compression="zstd")
        else:
            self._raw = path.open("wb")
            # filename="" and mtime=0: the gzip header must not depend on the path or clock
            self._text = (
                gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=1, mtime=0)
                if fmt == "csv.gz"
                else self._raw
            )
            self._text.write((",".join(schema.names) + "\n").encode())

    def write(self, df: pl.DataFrame) -> None:
        """Append rows; empty frames are skipped so empty tables are just a header/schema."""
        if df.height == 0:
            return
        self.rows += df.height
        if self._pq is not None:
            self._pq.write_table(df.to_arrow().cast(self.schema))
        else:
            assert self._text is not None
            df.write_csv(self._text, include_header=False)

    def close(self) -> None:
        """Flush and close, gzip trailer included."""
        if self._pq is not None:
            self._pq.close()
        if self._text is not None and self._text is not self._raw:
            self._text.close()
        if self._raw is not None:
            self._raw.close()


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def generate_landing(
    out_dir: Path,
    n_patients: int = 3000,
    seed: int = 20261126,
    n_exports: int = 3,
    formats: tuple[str, ...] = FORMATS,
    with_adverse_events: bool = True,
) -> list[Path]:
    """Write n_exports export folders under out_dir; return their paths in name order.

    Export ``k`` (folder ``network-<YYYYMMDDTHHMM>``) holds every row observed up to its
    cut-off that was not already sent, plus a 6-week overlap re-sent verbatim; the first
    export has the first ~60 % of patients. Formats rotate through ``formats``. Same
    arguments give byte-identical files. Existing table files of these folders are replaced
    (any extension, so a format change never leaves two files for one table).
    """
    if n_patients < 1:
        raise ValueError("n_patients must be >= 1")
    if not 1 <= n_exports <= 1000:
        raise ValueError("n_exports must be in 1..1000")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if not formats or any(f not in FORMATS for f in formats):
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}")
    out_dir = Path(out_dir)
    cutoffs = _export_times(n_exports)
    last = cutoffs[-1]
    tables = TABLES if with_adverse_events else TABLES[:3]
    exports: list[tuple[Path, str, datetime, float, float]] = []
    for k, cut in enumerate(cutoffs):
        at = LAST_EXPORT_AT - timedelta(minutes=round((last - cut) * 1440))
        path = out_dir / f"{SOURCE}-{at:%Y%m%dT%H%M}"
        lo = -np.inf if k == 0 else cutoffs[k - 1] - LOOKBACK
        exports.append((path, formats[k % len(formats)], at, lo, cut))

    sinks: list[dict[str, _Sink]] = []
    for path, fmt, _, _, _ in exports:
        path.mkdir(parents=True, exist_ok=True)
        for table in TABLES:
            for ext in FORMATS:
                (path / f"{table}.{ext}").unlink(missing_ok=True)
        (path / "manifest.json").unlink(missing_ok=True)
        sinks.append({t: _Sink(path / f"{t}.{fmt}", fmt, SCHEMAS[t]) for t in tables})
    try:
        for c, first in enumerate(range(0, n_patients, CHUNK)):
            rng = np.random.default_rng([seed, c])
            ch = _simulate(rng, first, min(CHUNK, n_patients - first), n_patients, seed, last)
            for (_, fmt, _, lo, hi), sink in zip(exports, sinks, strict=True):
                frames = _frames(ch, lo, hi, fmt != "parquet", with_adverse_events)
                for t in tables:
                    sink[t].write(frames[t])
            del ch
    finally:
        for sink in sinks:
            for s in sink.values():
                s.close()
    for (path, _, at, _, _), sink in zip(exports, sinks, strict=True):
        manifest = {
            "source": SOURCE,
            "exported_at": at.isoformat(),
            "row_counts": {t: sink[t].rows for t in tables},
        }
        (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return sorted(p for p, _, _, _, _ in exports)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m ketamine_outcomes.sample_exports --out DIR --patients N ...``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, required=True, help="landing directory")
    ap.add_argument("--patients", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=20261126)
    ap.add_argument("--exports", type=int, default=3)
    ap.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help="comma-separated rotation of csv, csv.gz, parquet",
    )
    ap.add_argument("--no-adverse-events", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    paths = generate_landing(
        args.out,
        n_patients=args.patients,
        seed=args.seed,
        n_exports=args.exports,
        formats=tuple(f.strip() for f in args.formats.split(",")),
        with_adverse_events=not args.no_adverse_events,
    )
    for p in paths:
        print(p)
    print(
        f"{args.patients} patients, {len(paths)} exports in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
