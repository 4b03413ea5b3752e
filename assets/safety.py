"""Stage ``marts``: safety signal checks on ``marts/safety_events``.

One asset check per configured adverse-event type, severity WARN and never blocking: a safety
signal is for a person to look at (a change in case mix can raise a rate too), not a reason to
withhold the marts, which publish the counts either way. The checks recompute the comparison
from the internal warehouse (the mart does not carry the export calendar), from the same
monitored sessions and attributed events as the mart: ``derived.safety_sessions`` and
``derived.safety_attributed_events``, built once per build in the ``patient_outcomes`` step
(``ketamine_outcomes.safety``); this step runs in its own process, so tables it built itself
would be a second computation of the same thing.
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    multi_asset_check,
)

from assets.marts import mart_key
from ketamine_outcomes.outcome_definitions import load_definitions
from ketamine_outcomes.safety import (
    RATE_CI_METHOD,
    SafetySignal,
    adverse_event_types,
    safety_signals,
)
from pipelines.resources import OutcomesWarehouse

SAFETY_EVENTS_KEY = mart_key("safety_events")


def signal_check_name(event: str) -> str:
    """Check name of one event type, e.g. ``safety_signal_dissociation``."""
    return f"safety_signal_{event.lower()}"


SIGNAL_SPECS = [
    AssetCheckSpec(
        signal_check_name(event),
        asset=SAFETY_EVENTS_KEY,
        blocking=False,
        description=(
            f"Safety signal for {event}: warns when events per 100 sessions of the recent "
            "sessions (first delivered in exports of the last safety_signals."
            "recent_window_days days) exceed the configured threshold, or rise significantly "
            "over the earlier sessions (one-sided exact conditional Poisson test)."
        ),
    )
    for event in adverse_event_types()
]


@multi_asset_check(
    specs=SIGNAL_SPECS,
    name="safety_signal_checks",
    description="Recent vs earlier adverse-event rates per event type (WARN, non-blocking).",
    pool="warehouse",
)
def safety_signal_checks(
    context: AssetCheckExecutionContext, outcomes_warehouse: OutcomesWarehouse
) -> Iterator[AssetCheckResult]:
    """One result per declared spec, always (an event type without data passes)."""
    defs = load_definitions()
    with outcomes_warehouse.internal() as con:
        signals = safety_signals(con, defs, source_schema="derived")
    for signal in signals:
        if signal.fired:
            context.log.warning(f"safety signal {signal.summary}")
        yield AssetCheckResult(
            asset_key=SAFETY_EVENTS_KEY,
            check_name=signal_check_name(signal.event),
            passed=not signal.fired,
            severity=AssetCheckSeverity.WARN,
            metadata=_metadata(signal, defs.definition_version),
        )


def _metadata(signal: SafetySignal, definition_version: str) -> dict:
    def number(value: float | None) -> MetadataValue:
        return MetadataValue.null() if value is None else MetadataValue.float(value)

    def moment(value) -> MetadataValue:
        return MetadataValue.null() if value is None else MetadataValue.text(value.isoformat())

    return {
        "summary": MetadataValue.text(signal.summary),
        "recent_rate_per_100_sessions": number(signal.recent_rate),
        "recent_ci_low": number(signal.recent_ci_low),
        "recent_ci_high": number(signal.recent_ci_high),
        "earlier_rate_per_100_sessions": number(signal.earlier_rate),
        "earlier_ci_low": number(signal.earlier_ci_low),
        "earlier_ci_high": number(signal.earlier_ci_high),
        "ci_method": RATE_CI_METHOD,
        "recent_sessions": signal.recent_sessions,
        "recent_events": signal.recent_events,
        "earlier_sessions": signal.earlier_sessions,
        "earlier_events": signal.earlier_events,
        "threshold_per_100_sessions": MetadataValue.float(signal.threshold_per_100_sessions),
        "exceeds_threshold": MetadataValue.bool(signal.exceeds_threshold),
        "test": signal.test,
        "p_value": number(signal.p_value),
        "alpha": MetadataValue.float(signal.alpha),
        "significant_rise": MetadataValue.bool(signal.significant_rise),
        "recent_since": moment(signal.recent_since),
        "newest_export_at": moment(signal.newest_export_at),
        "definition_version": definition_version,
    }
