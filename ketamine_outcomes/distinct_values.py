"""Row rules evaluated on distinct values, failures mapped back to rows.

Every row rule's outcome on a row depends only on the columns it reads (``Rule.reads``): the
value itself, the instrument next to a score, or a helper column computed per row (``__known``,
``__in_order``). So a rule fails on a row exactly when it fails on that row's combination of
those values, and GX needs to see each combination once, not once per row. At 1M patients
an export has ~5M assessment rows but ~400 (instrument, score) pairs, ~170 days and ~1M patient
ids: validating the distinct combinations cuts GX's work by 5-10x (docs/performance.md).

How: rules that read a common column are put in one *group* (connected components over the
columns they read); each group's distinct value combinations become a block of columns of
one frame; blocks shorter than the longest are padded by repeating their own combinations
(``position % k``), so every rule (``not_null`` included) sees only real combinations and
"every non-null value fails" (the column-type-throughout rule) holds on the padded frame
exactly when it holds on the rows. GX reports positions in that frame; a position maps to a
combination (``position % k``) and the combination to its rows by a null-safe join.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ketamine_outcomes.expectations import Rule

COMBINATION = "__combination"


@dataclass
class ValueGroup:
    """Rules that read overlapping columns, and the distinct combinations of those columns."""

    columns: list[str]
    rules: list[Rule]
    combinations: pl.DataFrame | None = None  # the distinct values, with COMBINATION index

    @property
    def join_columns(self) -> list[str]:
        """Columns a combination is matched on: the float ``__num`` helpers are a function of
        their text column, and float equality (NaN) is no key to join on."""
        assert self.combinations is not None
        return [c for c in self.columns if self.combinations.schema[c] != pl.Float64]


def value_groups(rules: list[Rule]) -> list[ValueGroup]:
    """Group rules into connected components of the columns they read."""
    groups: list[ValueGroup] = []
    for rule in rules:
        cols = list(rule.reads)
        merged = ValueGroup(cols, [rule])
        rest = []
        for g in groups:
            if set(g.columns) & set(merged.columns):
                merged = ValueGroup(g.columns + [c for c in merged.columns if c not in g.columns],
                                    g.rules + merged.rules)
            else:
                rest.append(g)
        groups = rest + [merged]
    return groups


def distinct_frame(frame: pl.DataFrame, groups: list[ValueGroup]) -> pl.DataFrame:
    """One frame holding every group's distinct value combinations side by side, each group
    padded to the longest by repeating its own combinations (fills ``group.combinations``)."""
    for g in groups:
        g.combinations = (frame.select(g.columns).unique(maintain_order=True)
                          .with_row_index(COMBINATION))
    length = max((g.combinations.height for g in groups), default=0)
    blocks = []
    for g in groups:
        k = g.combinations.height
        index = np.arange(length) % k if k else np.zeros(0, dtype=np.int64)
        blocks.append(g.combinations.select(g.columns)[index])
    return pl.concat(blocks, how="horizontal") if blocks else pl.DataFrame()


def failing_rows(frame: pl.DataFrame, position: str, groups: list[ValueGroup],
                 positions_by_rule: dict[str, list[int]]) -> pl.DataFrame:
    """``(position, rule)`` for every row of ``frame`` whose value combination failed a rule,
    given the positions GX reported in the distinct frame."""
    parts = []
    for g in groups:
        assert g.combinations is not None
        k = g.combinations.height
        pairs = [
            pl.DataFrame({COMBINATION: np.unique(np.asarray(positions_by_rule[r.rule_id]) % k),
                          "rule": r.rule_id},
                         schema={COMBINATION: pl.UInt32, "rule": pl.String})
            for r in g.rules if positions_by_rule.get(r.rule_id)
        ]
        if not pairs:
            continue
        keys = g.join_columns
        failed = pl.concat(pairs).join(g.combinations, on=COMBINATION).select(*keys, "rule")
        parts.append(frame.select(position, *keys)
                     .join(failed, on=keys, nulls_equal=True)
                     .select(position, "rule"))
    if not parts:
        return pl.DataFrame(schema={position: pl.Int64, "rule": pl.String})
    return pl.concat(parts)


def distinct_per_column(frame: pl.DataFrame) -> pl.DataFrame:
    """Each column's distinct values, padded with nulls to the longest (for rules that ignore
    nulls and report counts only: the de-identification patterns)."""
    uniques = [frame[c].unique(maintain_order=True) for c in frame.columns]
    length = max((s.len() for s in uniques), default=0)
    return pl.DataFrame([s.extend_constant(None, length - s.len()) for s in uniques])
