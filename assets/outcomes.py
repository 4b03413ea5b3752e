"""Stage ``outcomes``: each patient's outcome per analysed instrument (internal only).

The step also materialises what every later step of the build reads, once: the superseded
staging tables (``derived.current_*``) and the safety session and attribution tables
(``derived.safety_sessions``, ``derived.safety_attributed_events``). The marts step and the
safety signal checks run in other steps (often other processes), so computing these there
meant computing them twice (docs/performance.md items 5 and 8). After the first build only
the patients that new or re-delivered exports touched are derived again
(``ketamine_outcomes.rederive``); a change of definitions or of the derivation SQL derives
everything.
"""


from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.validation import STAGED_TABLES, staged_key
from ketamine_outcomes.outcome_definitions import load_definitions
from ketamine_outcomes.rederive import refresh_derived
from pipelines.resources import OutcomesWarehouse


@asset(
    group_name="outcomes",
    deps=[staged_key(t) for t in STAGED_TABLES],
    owners=["team:clinical-analytics"],
    tags={"stage": "outcomes"},
    pool="warehouse",
    description=(
        "Patient-level derivation (outcomes.md): baseline, end-of-induction status, ever "
        "response, time to first response or censoring, sessions to response, populations and "
        "attrition reasons, from the superseded staging tables. Lives in the internal warehouse "
        "(schema derived) and never in the analyst file. Also materialises, once per build, "
        "the superseded tables (derived.current_*) and the safety session and attribution "
        "tables read by the safety mart and the safety signal checks."
    ),
)
def patient_outcomes(context: AssetExecutionContext,
                     outcomes_warehouse: OutcomesWarehouse) -> MaterializeResult:
    defs = load_definitions()
    with outcomes_warehouse.internal() as con:
        refresh = refresh_derived(con, defs, schema="derived")
        context.log.info(f"derivation: {refresh.mode} ({refresh.reason})")
        rows = con.execute(
            "SELECT indication, instrument, count(*) AS patients FROM derived.patient_outcomes "
            "GROUP BY ALL ORDER BY ALL").fetchall()
    table = "\n".join(["| indication | instrument | patients |", "|---|---|---|"]
                      + [f"| {i} | {s} | {n} |" for i, s, n in rows])
    metadata = {
        "definition_version": defs.definition_version,
        "derivation_mode": refresh.mode,
        "derivation_reason": refresh.reason,
        "patient_instrument_rows": sum(r[2] for r in rows),
        "per_indication": MetadataValue.md(table),
    }
    if refresh.patients_rederived is not None:
        metadata["patients_rederived"] = refresh.patients_rederived
    return MaterializeResult(metadata=metadata)
