"""Every SQL block of docs/analyst-guide.md runs against a freshly built warehouse."""

import re
from pathlib import Path

import duckdb
import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "analyst-guide.md"
SQL_BLOCKS = re.findall(r"```sql\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)


def test_guide_has_at_least_eight_example_queries():
    assert len(SQL_BLOCKS) >= 9  # eight examples plus the catalogue query


@pytest.mark.parametrize("sql", SQL_BLOCKS, ids=[f"block{i}" for i in range(len(SQL_BLOCKS))])
def test_guide_query_runs_and_returns_rows(sample_warehouse: Path, sql: str):
    con = duckdb.connect(str(sample_warehouse), read_only=True)
    try:
        rows = con.execute(sql).fetchall()
    finally:
        con.close()
    assert rows, "every example must return rows on the sample warehouse"
