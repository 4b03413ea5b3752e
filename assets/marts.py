"""Stage ``marts``: the analyst-facing schema, published atomically as one file."""


from datetime import UTC, datetime

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    multi_asset,
)

from ketamine_outcomes.outcome_definitions import load_definitions
from ketamine_outcomes.publish import build_data_quality, publish_marts
from ketamine_outcomes.safety import build_safety_events, unattributed_events
from ketamine_outcomes.summaries import build_outcome_marts
from pipelines.resources import OutcomesWarehouse

MART_DESCRIPTIONS = {
    "response_rates": "Endpoint response, remission (pain: low pain state) and ever-response "
                      "rates with 95 % CIs per indication x instrument x endpoint x population "
                      "x stratum; small cells withheld.",
    "time_to_response": "Kaplan-Meier time to first response per indication x instrument x "
                        "stratum: median with Brookmeyer-Crowley CI, landmarks, descriptive "
                        "statistics among responders.",
    "time_to_response_curve": "Kaplan-Meier cumulative response step function with log-log "
                              "CIs, overall stratum only.",
    "indication_tests": "Exploratory log-rank and chi-square/Fisher comparisons across "
                        "indications.",
    "attrition": "Why patients are not in each analysis, per indication x instrument.",
    "safety_events": "Adverse events per 100 sessions and patient event rates (Wilson CI) per "
                     "indication x route x dose band of the session the event followed x "
                     "event type; empty when no export carried adverse events.",
    "data_quality": "Row accounting and status of every export seen (accepted, blocked, "
                    "incomplete, refused).",
}
MARTS = list(MART_DESCRIPTIONS)


def mart_key(name: str) -> AssetKey:
    return AssetKey(["marts", name])


@multi_asset(
    specs=[
        AssetSpec(mart_key(name), group_name="marts", description=text,
                  deps=["patient_outcomes", "landing_exports"],
                  owners=["team:clinical-analytics"], tags={"stage": "marts"})
        for name, text in MART_DESCRIPTIONS.items()
    ],
    pool="warehouse",
)
def analyst_marts(context: AssetExecutionContext, outcomes_warehouse: OutcomesWarehouse):
    """Build every mart in the internal warehouse, then publish them together in one new
    file swapped onto OUTCOMES_WAREHOUSE, so analysts only ever see one complete run."""
    defs = load_definitions()
    built_at = datetime.now(UTC)
    paths = outcomes_warehouse.paths()
    with outcomes_warehouse.internal() as con:
        counts = build_outcome_marts(con, defs, context.run_id, built_at,
                                     source_schema="derived", target_schema="build")
        # from derived.safety_* and derived.current_*, built once in the patient_outcomes step
        counts["safety_events"] = build_safety_events(con, defs, context.run_id, built_at,
                                                      target_schema="build",
                                                      source_schema="derived")
        unattributed = unattributed_events(con, "build", source_schema="derived")
        counts["data_quality"] = build_data_quality(con, context.run_id, built_at,
                                                    defs.definition_version)
        publish_marts(con, MARTS, paths.warehouse)
        preview = con.execute(
            "SELECT indication, instrument, n_patients, n_responders, "
            "round(response_rate, 3), round(response_ci_low, 3), round(response_ci_high, 3) "
            "FROM build.response_rates WHERE endpoint = 'end_of_induction' AND population = "
            "'ITT' AND stratum = 'overall' ORDER BY ALL").fetchall()
    context.log.info(f"published {len(MARTS)} marts to {paths.warehouse}")
    md = "\n".join(
        ["| indication | instrument | n | responders | rate | 95 % CI |",
         "|---|---|---|---|---|---|"]
        + [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]}-{r[6]} |" for r in preview])
    for name in MARTS:
        meta = {
            "dagster/row_count": counts.get(name, 0),
            "warehouse": MetadataValue.path(str(paths.warehouse)),
            "definition_version": defs.definition_version,
        }
        if name == "response_rates":
            meta["end_of_induction_ITT_overall"] = MetadataValue.md(md)
        if name == "safety_events":
            # events with no administration on or before their day are not in the mart
            meta["events_unattributed"] = unattributed
        yield MaterializeResult(asset_key=mart_key(name), metadata=meta)
