"""Rules are data: every generated rule comes from a contract entry, and adding an indication
or an instrument is a change of ``vocabulary.yaml`` only (``OUTCOMES_CONTRACTS_DIR``)."""

from __future__ import annotations

import re
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

import data_contracts
from ketamine_outcomes import expectations as ex
from tests.conftest import open_shared_pipeline

CONTRACT_TABLES = ("patients", "treatments", "assessments", "adverse_events")


def raw(name: str) -> dict:
    """A contract file read straight from the package folder (not through data_contracts)."""
    return yaml.safe_load((data_contracts.CONTRACTS_DIR / f"{name}.yaml").read_text())


def implied_rule_ids(table: str, vocabulary: dict) -> set[str]:
    """The rule ids the YAML of ``table`` implies, entry by entry."""
    spec = raw(table)
    ids: set[str] = set()
    for column, c in spec["columns"].items():
        if not c.get("nullable", False):
            ids.add(f"{column}.not_null")
        if c["type"] != "string":
            ids.add(f"{column}.type")
        if "pattern" in c:
            ids.add(f"{column}.pattern")
        if "enum" in c or "enum_from" in c:
            ids.add(f"{column}.enum")
        if "min" in c or "max" in c:
            ids.add(f"{column}.range")
        if "range_by" in c:
            for code in vocabulary[c["range_by"] + "s"]:
                ids |= {f"{column}.range[{code}]", f"{column}.decimals[{code}]"}
    ids |= {f"{column}.orphan" for column in spec.get("references", {})}
    if spec.get("ordered"):
        ids.add(f"{spec['ordered']['column']}.order")
    return ids


def test_assessments_rule_ids_are_what_the_yaml_implies():
    contract = data_contracts.table_contract("assessments")
    ids = [r.rule_id for r in ex.row_rules(contract, contract.column_names)]
    assert len(ids) == len(set(ids))
    instruments = ("MADRS", "PHQ9", "GAD7", "LSAS", "YBOCS", "NRS_PAIN")
    assert set(ids) == {
        "patient_id.not_null", "patient_id.pattern", "patient_id.orphan",
        "instrument.not_null", "instrument.enum",
        "day.not_null", "day.type", "day.range",
        "score.not_null", "score.type",
        *(f"score.range[{i}]" for i in instruments),
        *(f"score.decimals[{i}]" for i in instruments),
    }


@pytest.mark.parametrize("table", CONTRACT_TABLES)
def test_every_generated_rule_comes_from_a_contract_entry(table):
    contract = data_contracts.table_contract(table)
    rules = ex.row_rules(contract, contract.column_names)
    assert {r.rule_id for r in rules} == implied_rule_ids(table, raw("vocabulary"))
    assert ex.natural_key_rule(contract).rule_id == "natural_key.conflict"
    assert list(contract.natural_key) == raw(table)["natural_key"]


@pytest.mark.parametrize("table", CONTRACT_TABLES)
def test_generated_expectations_carry_the_yaml_values(table):
    spec, vocab, fmt = raw(table), raw("vocabulary"), raw("export_format")
    contract = data_contracts.table_contract(table)
    for rule in ex.row_rules(contract, contract.column_names):
        column, kind = rule.rule_id.split(".", 1)
        c = spec["columns"].get(column, {})
        if kind == "type":
            assert rule.kwargs["regex"] == fmt["type_patterns"][c["type"]]
        elif kind == "pattern":
            assert rule.kwargs["regex"] == c["pattern"]
        elif kind == "enum":
            allowed = c.get("enum") or list(vocab[c["enum_from"]])
            assert rule.kwargs["value_set"] == [str(v) for v in allowed]
        elif kind == "range":
            assert (rule.kwargs["min_value"], rule.kwargs["max_value"],
                    rule.kwargs["strict_min"]) == (c.get("min"), c.get("max"),
                                                   c.get("min_exclusive", False))
        elif kind.startswith("range["):
            inst = vocab["instruments"][kind[6:-1]]
            assert (rule.kwargs["min_value"], rule.kwargs["max_value"]) == (inst["min"],
                                                                            inst["max"])
            assert rule.kwargs["row_condition"] == (c["range_by"], kind[6:-1])
        elif kind.startswith("decimals["):
            inst = vocab["instruments"][kind[9:-1]]
            assert rule.kwargs["regex"] == ex.decimals_pattern(inst["decimals"])


def test_deidentification_rules_come_from_their_yaml():
    deid = raw("deidentification")
    kinds = ex.identifier_kind_rules("site_id")
    assert [r.rule_id for r in kinds] == [f"site_id.{k}" for k in
                                           deid["identifier_value_patterns"]]
    assert [r.kwargs["regex"] for r in kinds] == list(deid["identifier_value_patterns"].values())
    assert ex.age_rule("age_band").kwargs["regex"] == deid["age_over_89_pattern"]
    combined = re.compile(ex.identifier_value_rule("note").kwargs["regex"])
    for value in ("a.b@example.org", "123-45-6789", "555-123-4567", "(555) 123-4567",
                  "+1 555 123 4567", "2024-03-05", "03/05/2024", "5 Mar 2024"):
        assert combined.search(value), value
    for value in ("site_a", "25-34", "4.9", "PT0001", "NRS_PAIN", "12.5", "90+"):
        assert not combined.search(value), value


def test_absent_nullable_columns_get_no_rules():
    contract = data_contracts.table_contract("treatments")
    present = [c for c in contract.column_names if c not in ("dose_mg_per_kg", "duration_min")]
    columns = {r.column for r in ex.row_rules(contract, present)}
    assert columns == {"patient_id", "day", "session_number", "route", "dose_mg"}


@pytest.mark.parametrize(("decimals", "ok", "bad"), [
    (0, ["0", "12", "-3", "30.0", "30.00"], ["12.5", "1.01", "abc", "1e1"]),
    (1, ["0", "4.9", "4.90", "10.0", "7"], ["4.95", "4.901", ".5", "NaN"]),
])
def test_decimals_pattern_counts_significant_decimals(decimals, ok, bad):
    pattern = re.compile(ex.decimals_pattern(decimals))
    assert all(pattern.match(v) for v in ok)
    assert not any(pattern.match(v) for v in bad)


def test_every_rule_builds_a_gx_expectation_with_its_rule_id():
    for table in CONTRACT_TABLES:
        contract = data_contracts.table_contract(table)
        for rule in ex.row_rules(contract, contract.column_names):
            built = rule.build()
            assert built.meta["rule"] == rule.rule_id
            assert type(built).__name__ == rule.expectation_type


# ------------------------------------------------------------------------------------------
# a new indication and new instruments by configuration only
# ------------------------------------------------------------------------------------------

CONFIG_ID = "cfg-20261101T0600"
CONFIG_EXPORT = {
    "patients": "patient_id,site_id,indication,sex,age_band\n"
                "PT0001,site_a,MDD,F,25-34\nPT0004,site_a,PTSD,M,35-44\n",
    "treatments": "patient_id,day,session_number,route,dose_mg,dose_mg_per_kg,duration_min\n"
                  "PT0001,0,1,IV,35,0.5,40\nPT0004,0,1,IV,35,0.5,40\n",
    "assessments": "patient_id,instrument,day,score\n"
                   "PT0004,CAPS5,-1,50\n"
                   "PT0004,HAMD,-1,20\n"
                   "PT0004,HAMD,28,53\n"
                   "PT0001,HAMD,0,12.5\n"
                   "PT0004,CAPS5,28,81\n"
                   "PT0001,HAMD,28,52\n"
                   "PT0001,MADRS,0,30\n",
}


def extended_contracts(folder: Path) -> Path:
    shutil.copytree(data_contracts.CONTRACTS_DIR, folder,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    vocab = yaml.safe_load((folder / "vocabulary.yaml").read_text())
    vocab["instruments"]["HAMD"] = {"min": 0, "max": 52, "decimals": 0,
                                    "family": "depression_anxiety"}
    vocab["instruments"]["CAPS5"] = {"min": 0, "max": 80, "decimals": 0, "family": "ptsd"}
    vocab["indications"]["PTSD"] = {"meaning": "post-traumatic stress disorder",
                                    "primary_instrument": "CAPS5"}
    (folder / "vocabulary.yaml").write_text(yaml.safe_dump(vocab, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def configured(tmp_path_factory):
    folder = extended_contracts(tmp_path_factory.mktemp("contracts") / "data_contracts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OUTCOMES_CONTRACTS_DIR", str(folder))
        data_contracts.clear_cache()
        try:
            with open_shared_pipeline(tmp_path_factory, "config") as p:
                p.write_export(CONFIG_ID, CONFIG_EXPORT)
                p.ingest_all()
                yield p
        finally:
            data_contracts.clear_cache()
    data_contracts.clear_cache()


def test_new_indication_and_instruments_are_accepted(configured):
    acc = configured.accounting(CONFIG_ID)
    assert {t: v[:6] for t, v in acc.items()} == {
        "patients": ("accepted", 2, 2, 0, 0, False),
        "treatments": ("accepted", 2, 2, 0, 0, False),
        "assessments": ("accepted", 7, 4, 3, 0, False),
    }
    assert configured.query("SELECT patient_id, indication FROM staging.current_patients "
                            "ORDER BY ALL") == [("PT0001", "MDD"), ("PT0004", "PTSD")]
    assert configured.query("SELECT source_row, instrument, score FROM staging.assessments "
                            "ORDER BY source_row") == [
        (1, "CAPS5", Decimal("50.0")), (2, "HAMD", Decimal("20.0")),
        (6, "HAMD", Decimal("52.0")), (7, "MADRS", Decimal("30.0"))]


def test_new_instrument_range_and_decimals_are_enforced(configured):
    assert configured.quarantined(CONFIG_ID, "assessments") == {
        3: "score.range[HAMD]", 4: "score.decimals[HAMD]", 5: "score.range[CAPS5]"}


def test_extended_vocabulary_is_read_from_the_configured_folder(configured):
    # OUTCOMES_CONTRACTS_DIR is set while the fixture is active: rules see the extension ...
    contract = data_contracts.table_contract("assessments")
    assert "score.range[HAMD]" in {r.rule_id for r in ex.row_rules(contract, ["score"])}
    # ... and the package contracts are untouched
    assert "HAMD" not in raw("vocabulary")["instruments"]
    assert "PTSD" not in raw("vocabulary")["indications"]
