"""Stage ``reports``: Kaplan-Meier pictures and the static HTML report."""


import base64

import duckdb
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.marts import MARTS, mart_key
from ketamine_outcomes.report import render_html_report, render_km_plots
from pipelines.resources import OutcomesWarehouse


@asset(
    group_name="reports",
    deps=[mart_key(m) for m in MARTS],
    owners=["team:clinical-analytics"],
    tags={"stage": "reports"},
    description=(
        "Kaplan-Meier curves of cumulative response per indication (PNG, CI bands, numbers "
        "at risk) and a self-contained HTML report next to the published warehouse, both "
        "drawn only from the published (suppressed) marts."
    ),
)
def outcomes_report(context: AssetExecutionContext,
                    outcomes_warehouse: OutcomesWarehouse) -> MaterializeResult:
    paths = outcomes_warehouse.paths()
    out = paths.report_dir
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        plots = render_km_plots(con, out)
        html = render_html_report(con, out / "index.html", plots)
    finally:
        con.close()
    meta: dict = {"report": MetadataValue.path(str(html)), "plots": len(plots)}
    for indication, png in sorted(plots.items()):
        data = base64.b64encode(png.read_bytes()).decode()
        meta[f"km_{indication}"] = MetadataValue.md(
            f"![{indication}](data:image/png;base64,{data})")
    context.log.info(f"report written to {html}")
    return MaterializeResult(metadata=meta)
