"""Outcome definitions: thresholds, windows and cut-offs, loaded from configuration.

The defaults live in ``definitions.yaml`` next to this module (outcomes.md "Outcome definitions
— v1" is the authoritative text). An analyst can point ``load_definitions(path)`` or the
environment variable ``OUTCOMES_DEFINITIONS`` at another YAML file holding only the keys to
change; it is deep-merged over the defaults. The clinical vocabulary (which indications exist,
their primary instrument, instrument families) is *not* restated here: it comes from
``data_contracts.vocabulary()``.

Every number the pipeline publishes carries ``definition_version``, a hash of the effective
definitions, so two runs built under different thresholds can never be mixed up silently.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from data_contracts import table_contract, vocabulary

DEFAULT_DEFINITIONS_PATH = Path(__file__).resolve().parent / "definitions.yaml"
ENV_VAR = "OUTCOMES_DEFINITIONS"
# Format of the definitions (and prefix of definition_version); a new format is a new version.
DEFINITIONS_FORMAT = "v1"
CI_METHODS = ("wilson", "clopper-pearson")

_TOP_LEVEL_KEYS = frozenset(
    {
        "instruments",
        "secondary_instruments",
        "baseline_window",
        "endpoint_window",
        "followup_window",
        "landmarks",
        "ci_method",
        "confidence",
        "min_cell_size",
        "publish_curves",
        "fisher_seed",
        "safety_dose_bands",
        "safety_unknown_dose_band",
        "safety_signals",
    }
)
_INSTRUMENT_KEYS = frozenset(
    {"display_name", "response_reduction_pct", "remission_max", "remission_label", "min_baseline"}
)
_DOSE_BAND_KEYS = frozenset({"label", "max_mg_per_kg"})
_SAFETY_SIGNAL_KEYS = frozenset({"recent_window_days", "alpha", "thresholds_per_100_sessions"})


@dataclass(frozen=True)
class Window:
    """An inclusive day window relative to the first administration (day 0)."""

    start: int
    end: int

    def as_list(self) -> list[int]:
        return [self.start, self.end]


@dataclass(frozen=True)
class InstrumentDefinition:
    """Response, remission and evaluability rule of one instrument (exact decimals)."""

    instrument: str
    display_name: str
    response_reduction_pct: Decimal
    remission_max: Decimal
    remission_label: str
    min_baseline: Decimal

    @property
    def response_definition(self) -> str:
        """Human-readable response rule stored in every rate row, e.g. ``>= 50 % reduction in
        MADRS``."""
        return f">= {_plain(self.response_reduction_pct)} % reduction in {self.display_name}"

    @property
    def remission_definition(self) -> str:
        """Human-readable remission rule, e.g. ``MADRS <= 10`` or ``NRS <= 3 (low pain state)``:
        pain has no accepted remission, so the row names what its remission columns hold."""
        rule = f"{self.display_name} <= {_plain(self.remission_max)}"
        if self.remission_label != "remission":
            rule += f" ({self.remission_label})"
        return rule


@dataclass(frozen=True)
class DoseBand:
    """A safety dose band: doses up to and including ``max_mg_per_kg`` (None: no upper bound)."""

    label: str
    max_mg_per_kg: Decimal | None


@dataclass(frozen=True)
class SafetySignalDefinitions:
    """Safety signal checks (``ketamine_outcomes.safety.safety_signals``): the recent window,
    the one-sided level of the rise test and a rate ceiling per adverse-event type."""

    recent_window_days: int
    alpha: float
    thresholds_per_100_sessions: Mapping[str, Decimal]
    """event -> events per 100 sessions above which the recent rate fires a signal."""


@dataclass(frozen=True)
class OutcomeDefinitions:
    """The effective, validated outcome definitions of one run (immutable)."""

    instruments: Mapping[str, InstrumentDefinition]
    primary_instruments: Mapping[str, str]
    """indication -> primary instrument (from the vocabulary)."""
    instrument_families: Mapping[str, str]
    """instrument -> family (from the vocabulary); log-rank compares within a family."""
    secondary_instruments: tuple[str, ...]
    baseline_window: Window
    endpoint_window: Window
    followup_window: Window
    landmarks: tuple[int, ...]
    ci_method: str
    confidence: float
    min_cell_size: int
    publish_curves: bool
    fisher_seed: int
    safety_dose_bands: tuple[DoseBand, ...]
    safety_unknown_dose_band: str
    safety_signals: SafetySignalDefinitions
    definition_version: str
    sources: tuple[str, ...]
    """The YAML files merged, defaults first (provenance for logs; not part of the version)."""

    def canonical(self) -> dict[str, Any]:
        """JSON-ready form of everything that affects a published number (hashed for the
        version). Decimals are written as plain strings so 50 and 50.0 hash the same."""
        return _canonical_payload(self)

    def response_definition(self, instrument: str) -> str:
        return self.instruments[instrument].response_definition

    def remission_definition(self, instrument: str) -> str:
        return self.instruments[instrument].remission_definition


def load_definitions(path: Path | str | None = None) -> OutcomeDefinitions:
    """Load the default definitions, deep-merge an override file over them, validate.

    The override is ``path`` or, when ``path`` is None, the file named by the environment
    variable ``OUTCOMES_DEFINITIONS`` (unset or empty: defaults only). Mappings merge key by key
    (so ``instruments: {MADRS: {remission_max: 12}}`` changes one threshold), lists and scalars
    replace. Any unknown key, a vocabulary instrument without thresholds or an inconsistent value
    raises ``ValueError`` naming the key: a silently ignored typo would publish numbers under a
    definition nobody asked for.
    """
    raw = _read_yaml(DEFAULT_DEFINITIONS_PATH)
    sources = [str(DEFAULT_DEFINITIONS_PATH)]
    if path is None:
        env_value = os.environ.get(ENV_VAR, "").strip()
        path = Path(env_value) if env_value else None
    if path is not None:
        override_path = Path(path)
        if not override_path.is_file():
            raise FileNotFoundError(f"outcome definitions file not found: {override_path}")
        if override_path.resolve() != DEFAULT_DEFINITIONS_PATH:
            override = _read_yaml(override_path)
            _check_keys(override, _TOP_LEVEL_KEYS, str(override_path))
            raw = _deep_merge(raw, override)
            sources.append(str(override_path))
    return _validate(raw, tuple(sources))


def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: outcome definitions must be a YAML mapping")
    return data


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge recursively; anything else in ``override`` replaces ``base``."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _check_keys(mapping: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(str(k) for k in mapping if k not in allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown outcome-definition key(s) {unknown}; allowed: {sorted(allowed)}"
        )


def _decimal(value: Any, where: str) -> Decimal:
    """Exact decimal of a YAML number: via its shortest repr, so 0.3 is 0.3, not 0.299999..."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    try:
        result = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"{where}: expected a number, got {value!r}") from exc
    if not result.is_finite():
        raise ValueError(f"{where}: expected a finite number, got {value!r}")
    return result


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return value


def _window(value: Any, where: str) -> Window:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{where}: expected [first_day, last_day], got {value!r}")
    start, end = (_int(v, where) for v in value)
    if start > end:
        raise ValueError(f"{where}: first day {start} is after last day {end}")
    return Window(start, end)


def _validate(raw: Mapping[str, Any], sources: tuple[str, ...]) -> OutcomeDefinitions:
    _check_keys(raw, _TOP_LEVEL_KEYS, "outcome definitions")
    missing = sorted(_TOP_LEVEL_KEYS - set(raw))
    if missing:
        raise ValueError(f"outcome definitions: missing key(s) {missing}")

    vocab = vocabulary()
    vocab_instruments: dict[str, Any] = vocab["instruments"]
    primary = {ind: spec["primary_instrument"] for ind, spec in vocab["indications"].items()}
    families = {name: spec["family"] for name, spec in vocab_instruments.items()}

    raw_instruments = raw["instruments"]
    if not isinstance(raw_instruments, Mapping):
        raise ValueError("instruments: expected a mapping of instrument -> thresholds")
    unknown = sorted(set(raw_instruments) - set(vocab_instruments))
    if unknown:
        raise ValueError(
            f"instruments: {unknown} not in the vocabulary (data_contracts/vocabulary.yaml); "
            f"known: {sorted(vocab_instruments)}"
        )
    required = set(vocab_instruments) | set(primary.values())
    without = sorted(required - set(raw_instruments))
    if without:
        raise ValueError(f"instruments: no outcome thresholds for {without}")

    instruments: dict[str, InstrumentDefinition] = {}
    for name in sorted(raw_instruments):
        spec = raw_instruments[name]
        where = f"instruments.{name}"
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: expected a mapping of thresholds")
        _check_keys(spec, _INSTRUMENT_KEYS, where)
        absent = sorted(_INSTRUMENT_KEYS - set(spec))
        if absent:
            raise ValueError(f"{where}: missing key(s) {absent}")
        lo = _decimal(vocab_instruments[name]["min"], f"vocabulary {name}.min")
        hi = _decimal(vocab_instruments[name]["max"], f"vocabulary {name}.max")
        pct = _decimal(spec["response_reduction_pct"], f"{where}.response_reduction_pct")
        if not Decimal(0) < pct <= Decimal(100):
            raise ValueError(f"{where}.response_reduction_pct: must be in (0, 100], got {pct}")
        remission_max = _decimal(spec["remission_max"], f"{where}.remission_max")
        min_baseline = _decimal(spec["min_baseline"], f"{where}.min_baseline")
        for key, value in (("remission_max", remission_max), ("min_baseline", min_baseline)):
            if not lo <= value <= hi:
                raise ValueError(f"{where}.{key}: {value} outside the instrument range {lo}-{hi}")
        for key in ("display_name", "remission_label"):
            if not isinstance(spec[key], str) or not spec[key].strip():
                raise ValueError(f"{where}.{key}: expected a non-empty string")
        instruments[name] = InstrumentDefinition(
            instrument=name,
            display_name=spec["display_name"],
            response_reduction_pct=pct,
            remission_max=remission_max,
            remission_label=spec["remission_label"],
            min_baseline=min_baseline,
        )

    secondary = raw["secondary_instruments"]
    if not isinstance(secondary, list) or not all(isinstance(s, str) for s in secondary):
        raise ValueError("secondary_instruments: expected a list of instrument names")
    not_known = sorted(set(secondary) - set(vocab_instruments))
    if not_known:
        raise ValueError(f"secondary_instruments: {not_known} not in the vocabulary")

    landmarks_raw = raw["landmarks"]
    if not isinstance(landmarks_raw, list) or not landmarks_raw:
        raise ValueError("landmarks: expected a non-empty list of days")
    landmarks = tuple(_int(d, "landmarks") for d in landmarks_raw)
    if list(landmarks) != sorted(set(landmarks)) or landmarks[0] < 0:
        raise ValueError(f"landmarks: expected increasing non-negative days, got {landmarks_raw}")

    ci_method = raw["ci_method"]
    if ci_method not in CI_METHODS:
        raise ValueError(f"ci_method: expected one of {list(CI_METHODS)}, got {ci_method!r}")
    confidence_dec = _decimal(raw["confidence"], "confidence")
    if not Decimal(0) < confidence_dec < Decimal(1):
        raise ValueError(f"confidence: must be in (0, 1), got {confidence_dec}")
    min_cell_size = _int(raw["min_cell_size"], "min_cell_size")
    if min_cell_size < 1:
        raise ValueError(f"min_cell_size: must be >= 1, got {min_cell_size}")
    if not isinstance(raw["publish_curves"], bool):
        raise ValueError(f"publish_curves: expected true/false, got {raw['publish_curves']!r}")
    fisher_seed = _int(raw["fisher_seed"], "fisher_seed")
    if fisher_seed < 0:
        raise ValueError("fisher_seed: must be >= 0")

    bands = _dose_bands(raw["safety_dose_bands"])
    unknown_band = raw["safety_unknown_dose_band"]
    if not isinstance(unknown_band, str) or not unknown_band.strip():
        raise ValueError("safety_unknown_dose_band: expected a non-empty string")
    if unknown_band in {b.label for b in bands}:
        raise ValueError("safety_unknown_dose_band: must differ from every dose band label")

    partial = OutcomeDefinitions(
        instruments=MappingProxyType(instruments),
        primary_instruments=MappingProxyType(dict(sorted(primary.items()))),
        instrument_families=MappingProxyType(dict(sorted(families.items()))),
        secondary_instruments=tuple(secondary),
        baseline_window=_window(raw["baseline_window"], "baseline_window"),
        endpoint_window=_window(raw["endpoint_window"], "endpoint_window"),
        followup_window=_window(raw["followup_window"], "followup_window"),
        landmarks=landmarks,
        ci_method=ci_method,
        confidence=float(confidence_dec),
        min_cell_size=min_cell_size,
        publish_curves=raw["publish_curves"],
        fisher_seed=fisher_seed,
        safety_dose_bands=bands,
        safety_unknown_dose_band=unknown_band,
        safety_signals=_safety_signals(raw["safety_signals"]),
        definition_version="",
        sources=sources,
    )
    digest = hashlib.sha256(
        json.dumps(partial.canonical(), sort_keys=True, separators=(",", ":")).encode("utf-8")
    ).hexdigest()
    return replace(partial, definition_version=f"{DEFINITIONS_FORMAT}-{digest[:10]}")


def _dose_bands(value: Any) -> tuple[DoseBand, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError("safety_dose_bands: expected a non-empty list of {label, max_mg_per_kg}")
    bands: list[DoseBand] = []
    for i, item in enumerate(value):
        where = f"safety_dose_bands[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected a mapping")
        _check_keys(item, _DOSE_BAND_KEYS, where)
        if not isinstance(item.get("label"), str) or not item["label"].strip():
            raise ValueError(f"{where}.label: expected a non-empty string")
        upper = item.get("max_mg_per_kg")
        bands.append(
            DoseBand(item["label"], None if upper is None else _decimal(upper, f"{where}.max"))
        )
    uppers = [b.max_mg_per_kg for b in bands]
    if uppers[-1] is not None or any(u is None for u in uppers[:-1]):
        raise ValueError("safety_dose_bands: only the last band may (and must) be unbounded")
    bounded = [u for u in uppers if u is not None]
    if bounded != sorted(set(bounded)) or (bounded and bounded[0] <= 0):
        raise ValueError("safety_dose_bands: upper bounds must be positive and increasing")
    if len({b.label for b in bands}) != len(bands):
        raise ValueError("safety_dose_bands: labels must be unique")
    return tuple(bands)


def _safety_signals(value: Any) -> SafetySignalDefinitions:
    """Validate ``safety_signals``; every adverse-event type of the export contract needs a
    threshold (one Dagster check per type), and an unknown type is refused as a typo."""
    if not isinstance(value, Mapping):
        raise ValueError("safety_signals: expected a mapping")
    _check_keys(value, _SAFETY_SIGNAL_KEYS, "safety_signals")
    absent = sorted(_SAFETY_SIGNAL_KEYS - set(value))
    if absent:
        raise ValueError(f"safety_signals: missing key(s) {absent}")
    window = _int(value["recent_window_days"], "safety_signals.recent_window_days")
    if window < 1:
        raise ValueError("safety_signals.recent_window_days: must be >= 1")
    alpha = _decimal(value["alpha"], "safety_signals.alpha")
    if not Decimal(0) < alpha < Decimal(1):
        raise ValueError(f"safety_signals.alpha: must be in (0, 1), got {alpha}")
    raw_thresholds = value["thresholds_per_100_sessions"]
    where = "safety_signals.thresholds_per_100_sessions"
    if not isinstance(raw_thresholds, Mapping):
        raise ValueError(f"{where}: expected a mapping of event -> events per 100 sessions")
    events = table_contract("adverse_events").column("event").enum or ()
    unknown = sorted(set(raw_thresholds) - set(events))
    if unknown:
        raise ValueError(f"{where}: {unknown} not adverse-event types of the export contract")
    without = [e for e in events if e not in raw_thresholds]
    if without:
        raise ValueError(f"{where}: no threshold for {without}")
    thresholds: dict[str, Decimal] = {}
    for event in events:
        threshold = _decimal(raw_thresholds[event], f"{where}.{event}")
        if threshold < 0:
            raise ValueError(f"{where}.{event}: must be >= 0, got {threshold}")
        thresholds[event] = threshold
    return SafetySignalDefinitions(window, float(alpha), MappingProxyType(thresholds))


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 50 -> "50", 2.50 -> "2.5"."""
    return format(value.normalize(), "f")


def _canonical_payload(defs: OutcomeDefinitions) -> dict[str, Any]:
    return {
        "format": DEFINITIONS_FORMAT,
        "instruments": {
            name: {
                "display_name": d.display_name,
                "response_reduction_pct": _plain(d.response_reduction_pct),
                "remission_max": _plain(d.remission_max),
                "remission_label": d.remission_label,
                "min_baseline": _plain(d.min_baseline),
            }
            for name, d in defs.instruments.items()
        },
        # The vocabulary mapping changes what is analysed, so it is part of the version too.
        "primary_instruments": dict(defs.primary_instruments),
        "instrument_families": dict(defs.instrument_families),
        "secondary_instruments": list(defs.secondary_instruments),
        "baseline_window": defs.baseline_window.as_list(),
        "endpoint_window": defs.endpoint_window.as_list(),
        "followup_window": defs.followup_window.as_list(),
        "landmarks": list(defs.landmarks),
        "ci_method": defs.ci_method,
        "confidence": _plain(Decimal(str(defs.confidence))),
        "min_cell_size": defs.min_cell_size,
        "publish_curves": defs.publish_curves,
        "fisher_seed": defs.fisher_seed,
        "safety_dose_bands": [
            {
                "label": b.label,
                "max_mg_per_kg": None if b.max_mg_per_kg is None else _plain(b.max_mg_per_kg),
            }
            for b in defs.safety_dose_bands
        ],
        "safety_unknown_dose_band": defs.safety_unknown_dose_band,
        "safety_signals": {
            "recent_window_days": defs.safety_signals.recent_window_days,
            "alpha": _plain(Decimal(str(defs.safety_signals.alpha))),
            "thresholds_per_100_sessions": {
                event: _plain(t)
                for event, t in defs.safety_signals.thresholds_per_100_sessions.items()
            },
        },
    }
