"""Outcome definitions: the defaults of outcomes.md, overrides, validation, versioning."""

from __future__ import annotations

import dataclasses
import re
from decimal import Decimal
from pathlib import Path

import pytest

from data_contracts import vocabulary
from ketamine_outcomes import outcome_definitions
from ketamine_outcomes.outcome_definitions import load_definitions


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTCOMES_DEFINITIONS", raising=False)


def write(tmp_path: Path, text: str, name: str = "override.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_those_of_outcomes_md():
    defs = load_definitions()
    # (response %, remission max, remission label, min baseline) per outcomes.md
    expected = {
        "MADRS": ("50", "10", "remission", "20"),
        "PHQ9": ("50", "4", "remission", "10"),
        "GAD7": ("50", "4", "remission", "10"),
        "LSAS": ("30", "30", "remission", "60"),
        "YBOCS": ("35", "12", "remission", "16"),
        "NRS_PAIN": ("30", "3", "low pain state", "4"),
    }
    for name, (pct, remission_max, label, minimum) in expected.items():
        rule = defs.instruments[name]
        assert rule.response_reduction_pct == Decimal(pct), name
        assert rule.remission_max == Decimal(remission_max), name
        assert rule.remission_label == label, name
        assert rule.min_baseline == Decimal(minimum), name
    assert defs.secondary_instruments == ("PHQ9",)
    assert (defs.baseline_window.start, defs.baseline_window.end) == (-14, 0)
    assert (defs.endpoint_window.start, defs.endpoint_window.end) == (21, 35)
    assert (defs.followup_window.start, defs.followup_window.end) == (1, 84)
    assert defs.landmarks == (1, 7, 14, 28, 84)
    assert (defs.ci_method, defs.confidence) == ("wilson", 0.95)
    assert (defs.min_cell_size, defs.publish_curves) == (11, True)
    assert isinstance(defs.fisher_seed, int)
    assert [b.label for b in defs.safety_dose_bands] == ["<=0.5", "0.5-1", ">1"]
    assert [b.max_mg_per_kg for b in defs.safety_dose_bands] == [
        Decimal("0.5"),
        Decimal(1),
        None,
    ]
    assert defs.safety_unknown_dose_band == "unknown"


def test_vocabulary_is_read_not_restated():
    defs = load_definitions()
    vocab = vocabulary()
    assert dict(defs.primary_instruments) == {
        ind: spec["primary_instrument"] for ind, spec in vocab["indications"].items()
    }
    assert set(defs.instruments) == set(vocab["instruments"])
    assert defs.instrument_families["NRS_PAIN"] == "pain"
    assert defs.instrument_families["MADRS"] == "depression_anxiety"


def test_human_readable_definitions():
    defs = load_definitions()
    assert defs.response_definition("MADRS") == ">= 50 % reduction in MADRS"
    assert defs.remission_definition("MADRS") == "MADRS <= 10"
    assert defs.response_definition("NRS_PAIN") == ">= 30 % reduction in NRS"
    assert defs.remission_definition("NRS_PAIN") == "NRS <= 3 (low pain state)"
    assert defs.remission_definition("PHQ9") == "PHQ-9 <= 4"
    assert defs.response_definition("YBOCS") == ">= 35 % reduction in Y-BOCS"


def test_definition_version_is_a_stable_hash():
    first, second = load_definitions(), load_definitions()
    assert re.fullmatch(r"v1-[0-9a-f]{10}", first.definition_version)
    assert first.definition_version == second.definition_version


def test_every_key_change_changes_the_version(tmp_path: Path):
    base = load_definitions().definition_version
    overrides = [
        "instruments: {MADRS: {remission_max: 12}}",
        "instruments: {NRS_PAIN: {response_reduction_pct: 50}}",
        "instruments: {LSAS: {min_baseline: 50}}",
        "endpoint_window: [21, 28]",
        "baseline_window: [-7, 0]",
        "followup_window: [1, 56]",
        "landmarks: [7, 28]",
        "ci_method: clopper-pearson",
        "confidence: 0.9",
        "min_cell_size: 5",
        "publish_curves: false",
        "fisher_seed: 1",
        "secondary_instruments: []",
        "safety_unknown_dose_band: no_dose",
    ]
    versions = {base}
    for i, text in enumerate(overrides):
        version = load_definitions(write(tmp_path, text, f"o{i}.yaml")).definition_version
        assert version not in versions, text
        versions.add(version)


def test_equal_values_written_differently_keep_the_version(tmp_path: Path):
    # 50 and 50.0 are the same threshold: canonical decimals, same version
    text = "instruments: {MADRS: {response_reduction_pct: 50.0}}\nmin_cell_size: 11"
    same = write(tmp_path, text)
    assert load_definitions(same).definition_version == load_definitions().definition_version


def test_override_is_deep_merged(tmp_path: Path):
    # the esketamine (TRANSFORM) remission alternative: only MADRS remission_max changes
    defs = load_definitions(write(tmp_path, "instruments:\n  MADRS:\n    remission_max: 12\n"))
    default = load_definitions()
    madrs = defs.instruments["MADRS"]
    assert madrs.remission_max == Decimal(12)
    assert madrs.response_reduction_pct == Decimal(50) and madrs.min_baseline == Decimal(20)
    assert defs.remission_definition("MADRS") == "MADRS <= 12"
    assert defs.instruments["PHQ9"] == default.instruments["PHQ9"]
    assert defs.endpoint_window == default.endpoint_window
    assert len(defs.sources) == 2


def test_fractional_thresholds_stay_exact(tmp_path: Path):
    defs = load_definitions(
        write(tmp_path, "instruments: {NRS_PAIN: {response_reduction_pct: 33.3}}")
    )
    assert defs.instruments["NRS_PAIN"].response_reduction_pct == Decimal("33.3")
    assert defs.response_definition("NRS_PAIN") == ">= 33.3 % reduction in NRS"


def test_environment_variable_names_the_override(tmp_path: Path, monkeypatch):
    path = write(tmp_path, "min_cell_size: 20")
    monkeypatch.setenv("OUTCOMES_DEFINITIONS", str(path))
    assert load_definitions().min_cell_size == 20
    # an explicit path wins over the environment
    other = write(tmp_path, "min_cell_size: 5", "other.yaml")
    assert load_definitions(other).min_cell_size == 5


def test_missing_override_file_is_an_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_definitions(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("min_cel_size: 5", "unknown outcome-definition key"),
        ("instruments: {MADRS: {remision_max: 12}}", "unknown outcome-definition key"),
        ("instruments: {PHQ-9: {remission_max: 4}}", "not in the vocabulary"),
        ("secondary_instruments: [HAMD]", "not in the vocabulary"),
        ("ci_method: exact", "ci_method"),
        ("endpoint_window: [35, 21]", "endpoint_window"),
        ("baseline_window: [-14]", "baseline_window"),
        ("landmarks: [28, 7]", "landmarks"),
        ("confidence: 95", "confidence"),
        ("min_cell_size: 0", "min_cell_size"),
        ("min_cell_size: 11.5", "min_cell_size"),
        ("publish_curves: maybe", "publish_curves"),
        ("instruments: {MADRS: {remission_max: 61}}", "outside the instrument range"),
        ("instruments: {MADRS: {response_reduction_pct: 0}}", "response_reduction_pct"),
        ("instruments: {MADRS: {response_reduction_pct: fifty}}", "expected a number"),
        ("safety_dose_bands: [{label: a, max_mg_per_kg: 1}]", "unbounded"),
        (
            "safety_dose_bands: [{label: a, max_mg_per_kg: 1}, {label: b, max_mg_per_kg: 0.5},"
            " {label: c, max_mg_per_kg: null}]",
            "increasing",
        ),
    ],
)
def test_invalid_configuration_is_refused(tmp_path: Path, text: str, message: str):
    with pytest.raises(ValueError, match=message):
        load_definitions(write(tmp_path, text))


def test_every_vocabulary_instrument_needs_thresholds(tmp_path: Path, monkeypatch):
    default_text = outcome_definitions.DEFAULT_DEFINITIONS_PATH.read_text(encoding="utf-8")
    start = default_text.index("  PHQ9:")
    end = default_text.index("  GAD7:")
    without_phq9 = write(tmp_path, default_text[:start] + default_text[end:], "defaults.yaml")
    monkeypatch.setattr(outcome_definitions, "DEFAULT_DEFINITIONS_PATH", without_phq9)
    with pytest.raises(ValueError, match=r"no outcome thresholds for \['PHQ9'\]"):
        load_definitions()


def test_definitions_are_immutable():
    defs = load_definitions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        defs.min_cell_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        defs.instruments["MADRS"] = defs.instruments["PHQ9"]  # type: ignore[index]
