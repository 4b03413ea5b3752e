"""Great Expectations suites generated from the data contracts.

Nothing here restates a rule: every expectation is derived from a ``data_contracts`` YAML
entry and carries its rule id in ``meta["rule"]``, so the rows GX reports as unexpected are
exactly the rows that get quarantined (row rules) or the reason an export is blocked
(de-identification). GX is imported lazily (it takes seconds to import).

Rule ids read ``<column>.<rule>`` (e.g. ``score.range[MADRS]``, ``patient_id.orphan``).
Helper columns the suites look at are computed in polars before validation:
``<col>__num`` (numeric value of a typed column), ``<col>__known`` (referenced row exists),
``<col>__in_order`` (ordering rule holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import data_contracts
from data_contracts import TableContract

NUMERIC_SUFFIX = "__num"


def numeric_column(name: str) -> str:
    return f"{name}{NUMERIC_SUFFIX}"


def known_column(name: str) -> str:
    return f"{name}__known"


def in_order_column(name: str) -> str:
    return f"{name}__in_order"


@dataclass(frozen=True)
class Rule:
    """One generated expectation, described so a person can read what it checks."""

    rule_id: str
    column: str
    kind: str  # "row" | "deidentification" | "natural_key"
    description: str
    expectation_type: str
    kwargs: dict[str, Any]

    @property
    def reads(self) -> tuple[str, ...]:
        """The frame columns the expectation looks at (its outcome on a row depends on
        nothing else, which is what lets validation run on distinct values)."""
        cols = [self.kwargs["column"]] if "column" in self.kwargs else []
        if cols and cols[0].endswith(NUMERIC_SUFFIX):  # a number is read from its text
            cols.insert(0, cols[0].removesuffix(NUMERIC_SUFFIX))
        cols += list(self.kwargs.get("column_list", []))
        if "row_condition" in self.kwargs:
            cols.append(self.kwargs["row_condition"][0])
        return tuple(dict.fromkeys(cols))

    def build(self) -> Any:
        """Instantiate the GX expectation (imports GX)."""
        import great_expectations.expectations as gxe
        from great_expectations.expectations.row_conditions import Column

        kwargs = dict(self.kwargs)
        if "row_condition" in kwargs:
            col, value = kwargs.pop("row_condition")
            kwargs["row_condition"] = Column(col) == value
        cls = getattr(gxe, self.expectation_type)
        return cls(**kwargs, meta={"rule": self.rule_id, "description": self.description})


def decimals_pattern(decimals: int) -> str:
    """Text of a number with at most ``decimals`` significant decimals (trailing 0s allowed)."""
    if decimals == 0:
        return r"^-?[0-9]+(\.0+)?$"
    return rf"^-?[0-9]+(\.[0-9]{{1,{decimals}}}0*)?$"


def row_rules(contract: TableContract, present_columns: list[str]) -> list[Rule]:
    """Row rules of a table: failing rows are quarantined with these rule ids."""
    fmt = data_contracts.export_format()
    vocab = data_contracts.vocabulary()
    rules: list[Rule] = []
    for col in contract.columns:
        c = col.name
        if not col.nullable:
            rules.append(Rule(f"{c}.not_null", c, "row", f"{c} is required",
                              "ExpectColumnValuesToNotBeNull", {"column": c}))
        if col.type != "string":
            rules.append(Rule(f"{c}.type", c, "row", f"{c} must be a valid {col.type}",
                              "ExpectColumnValuesToMatchRegex",
                              {"column": c, "regex": fmt["type_patterns"][col.type]}))
        if col.pattern:
            rules.append(Rule(f"{c}.pattern", c, "row", f"{c} must match {col.pattern}",
                              "ExpectColumnValuesToMatchRegex",
                              {"column": c, "regex": col.pattern}))
        if col.enum is not None:
            rules.append(Rule(f"{c}.enum", c, "row", f"{c} must be one of {', '.join(col.enum)}",
                              "ExpectColumnValuesToBeInSet",
                              {"column": c, "value_set": list(col.enum)}))
        if col.min is not None or col.max is not None:
            op = "<" if col.min_exclusive else "<="
            rules.append(Rule(f"{c}.range", c, "row", f"{col.min} {op} {c} <= {col.max}",
                              "ExpectColumnValuesToBeBetween",
                              {"column": numeric_column(c), "min_value": col.min,
                               "max_value": col.max, "strict_min": col.min_exclusive}))
        if col.range_by:
            for code, inst in vocab[f"{col.range_by}s"].items():
                cond = (col.range_by, code)
                rules.append(Rule(
                    f"{c}.range[{code}]", c, "row",
                    f"{code}: {inst['min']} <= {c} <= {inst['max']}",
                    "ExpectColumnValuesToBeBetween",
                    {"column": numeric_column(c), "min_value": inst["min"],
                     "max_value": inst["max"], "row_condition": cond}))
                rules.append(Rule(
                    f"{c}.decimals[{code}]", c, "row",
                    f"{code}: {c} has at most {inst['decimals']} decimal(s)",
                    "ExpectColumnValuesToMatchRegex",
                    {"column": c, "regex": decimals_pattern(int(inst["decimals"])),
                     "row_condition": cond}))
    for col, table in contract.references.items():
        rules.append(Rule(f"{col}.orphan", col, "row",
                          f"{col} must exist in {table} (same or earlier export)",
                          "ExpectColumnValuesToBeInSet",
                          {"column": known_column(col), "value_set": [True]}))
    if contract.ordered:
        o = contract.ordered
        rules.append(Rule(f"{o['column']}.order", o["column"], "row",
                          f"{o['column']} must increase with {o['by']} within {o['within']}",
                          "ExpectColumnValuesToBeInSet",
                          {"column": in_order_column(o["column"]), "value_set": [True]}))
    return [r for r in rules if r.column in present_columns]


def natural_key_rule(contract: TableContract) -> Rule:
    """After exact duplicates are dropped, every remaining copy of a repeated key is a conflict."""
    key = list(contract.natural_key)
    description = f"({', '.join(key)}) repeated with different values in one export"
    if len(key) == 1:
        return Rule("natural_key.conflict", key[0], "natural_key", description,
                    "ExpectColumnValuesToBeUnique", {"column": key[0]})
    return Rule("natural_key.conflict", ",".join(key), "natural_key", description,
                "ExpectCompoundColumnsToBeUnique", {"column_list": key})


def identifier_value_rule(column: str) -> Rule:
    """All identifier value patterns of one column as one expectation (a cheap first pass)."""
    patterns = data_contracts.deidentification()["identifier_value_patterns"]
    combined = "|".join(f"({p})" for p in patterns.values())
    return Rule(f"{column}.identifier_value", column, "deidentification",
                "no value may look like an e-mail, SSN, phone number or calendar date",
                "ExpectColumnValuesToNotMatchRegex", {"column": column, "regex": combined})


def identifier_kind_rules(column: str) -> list[Rule]:
    """One expectation per identifier kind, run only on a column that failed the first pass,
    so the refusal can say which kind of identifier was found."""
    patterns = data_contracts.deidentification()["identifier_value_patterns"]
    return [
        Rule(f"{column}.{kind}", column, "deidentification", f"value looks like a {kind}",
             "ExpectColumnValuesToNotMatchRegex", {"column": column, "regex": pattern})
        for kind, pattern in patterns.items()
    ]


def age_rule(column: str) -> Rule:
    """Safe Harbor: an age over 89 may only be given as ``90+``."""
    return Rule(f"{column}.age_over_89", column, "deidentification",
                "an age over 89 must be given as 90+",
                "ExpectColumnValuesToNotMatchRegex",
                {"column": column,
                 "regex": data_contracts.deidentification()["age_over_89_pattern"]})
