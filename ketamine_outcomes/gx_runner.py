"""A small runner of Great Expectations 1.x on pandas batches.

(``dagster-ge`` needs GX < 1.0, see stack-notes.) One :class:`GxSession` per export: an
ephemeral context (nothing written but the Data Docs site we ask for, no analytics), one
pandas data source, a ``ValidationDefinition`` per suite over the whole batch (no sampling).

Privacy: results are requested with ``exclude_unexpected_values`` and no partial lists, so
neither the returned results nor the Data Docs built from them contain a value from the
export; only row *positions* come back, and they are mapped to source rows by the caller.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ketamine_outcomes.expectations import Rule

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

ROW_RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "exclude_unexpected_values": True,
    "partial_unexpected_count": 0,
    "return_unexpected_index_query": False,
}
# Identifier rules need counts only: positions of identifier values are never kept.
COUNT_RESULT_FORMAT = {
    "result_format": "BASIC",
    "exclude_unexpected_values": True,
    "partial_unexpected_count": 0,
    "return_unexpected_index_query": False,
}


class ValidationEngineError(RuntimeError):
    """GX failed to compute a metric: an engine fault, not a data failure."""


@dataclass(frozen=True)
class RuleResult:
    """Outcome of one rule on one batch."""

    rule: Rule
    success: bool
    element_count: int
    unexpected_count: int
    missing_count: int
    unexpected_positions: list[int] | None


def _raised(exception_info: Any) -> bool:
    """True when GX reports an engine exception (flat or nested per metric)."""
    if not exception_info:
        return False
    if isinstance(exception_info, dict):
        if exception_info.get("raised_exception"):
            return True
        return any(isinstance(v, dict) and v.get("raised_exception")
                   for v in exception_info.values())
    return bool(getattr(exception_info, "raised_exception", False))


class GxSession:
    """One ephemeral GX context, with an optional local Data Docs site."""

    def __init__(self, docs_dir: Path | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import great_expectations as gx
            from great_expectations.data_context.types.base import ProgressBarsConfig

        from great_expectations.execution_engine import pandas_execution_engine

        # GX fingerprints every pandas batch with md5 over all its values (11 % of validation
        # time at 1M patients) only to name the batch; we name batches ourselves.
        pandas_execution_engine.HASH_THRESHOLD = 0
        self._gx = gx
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.docs_dir = docs_dir
        if docs_dir is not None:
            self.context.add_data_docs_site(
                "outcomes_local",
                {
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(docs_dir),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        self._source = self.context.data_sources.add_pandas("exports")
        self.expectations_evaluated = 0
        self.expectations_failed = 0
        self.seconds = 0.0  # spent in validate(): the GX share of an export's ingestion

    def validate(self, suite_name: str, frame: pl.DataFrame, rules: list[Rule],
                 result_format: dict[str, Any]) -> list[RuleResult]:
        """Validate ``frame`` (whole batch) against ``rules``; results in ``rules`` order."""
        if not rules:
            return []
        started = time.perf_counter()
        try:
            return self._validate(suite_name, frame, rules, result_format)
        finally:
            self.seconds += time.perf_counter() - started

    def _validate(self, suite_name: str, frame: pl.DataFrame, rules: list[Rule],
                  result_format: dict[str, Any]) -> list[RuleResult]:
        gx = self._gx
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            suite = self.context.suites.add(gx.ExpectationSuite(name=suite_name))
            for rule in rules:
                suite.add_expectation(rule.build())
            asset = self._source.add_dataframe_asset(suite_name)
            batch = asset.add_batch_definition_whole_dataframe("whole_export_table")
            definition = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
            )
            pdf = frame.to_pandas()
            outcome = definition.run(batch_parameters={"dataframe": pdf},
                                     result_format=result_format)
            # GX keeps every validated frame in its batch cache until the context goes away
            # (measured: 11 GiB peak at 1M patients); we never re-read a batch, so drop it.
            # Both caches: the Batch objects (``_batch_cache``) hold the frame too (measured:
            # 12 frames, 720 MB, alive after an export at 1M patients with only the data cache
            # cleared).
            batch_manager = self._source.get_execution_engine().batch_manager
            batch_manager.batch_data_cache.clear()
            batch_manager.reset_batch_cache()
        by_rule = {r.expectation_config.meta.get("rule"): r for r in outcome.results}
        results: list[RuleResult] = []
        for rule in rules:
            res = by_rule.get(rule.rule_id)
            if res is None or _raised(res.exception_info):
                raise ValidationEngineError(
                    f"Great Expectations could not evaluate rule {rule.rule_id} "
                    f"(suite {suite_name}); this is an engine error, not a data failure"
                )
            body = res.result or {}
            positions = body.get("unexpected_index_list")
            results.append(RuleResult(
                rule=rule,
                success=bool(res.success),
                element_count=int(body.get("element_count") or 0),
                unexpected_count=int(body.get("unexpected_count") or 0),
                missing_count=int(body.get("missing_count") or 0),
                unexpected_positions=[int(p) for p in positions] if positions is not None else None,
            ))
        self.expectations_evaluated += len(results)
        self.expectations_failed += sum(not r.success for r in results)
        return results

    def build_data_docs(self) -> Path | None:
        """Render the Data Docs site for everything validated in this session."""
        if self.docs_dir is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.context.build_data_docs(site_names=["outcomes_local"])
        return self.docs_dir / "index.html"
