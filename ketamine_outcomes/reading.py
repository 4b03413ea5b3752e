"""Reading one table file of an export into a polars frame of text columns.

Every column is read as text, against the column list of the table's contract, so nothing
is inferred (``007`` stays ``007``) and every typed rule is checked later, by Great
Expectations, on the text the clinic actually sent. Parquet values are rendered to the same
text form (a whole-valued float in an integer column loses its ``.0``, exports.md).

CSV is parsed by DuckDB's strict CSV reader with the column list fixed from the header:
polars' reader silently pads a short line with nulls (checked on polars 2.1), which would
turn broken quoting into missing values, while the spec makes a line with the wrong number
of fields a file-level fault. DuckDB streams the file and hands an Arrow table to polars;
everything after that is polars.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

import data_contracts
from data_contracts import TableContract
from ketamine_outcomes.faults import ExportBlocked, FileFault

SOURCE_ROW = "source_row"


@dataclass
class TableRead:
    """A table file read as text: contract columns plus any unknown columns."""

    table: str
    file: str
    frame: pl.DataFrame  # source_row + contract columns (+ unknown columns, still present)
    unknown_columns: list[str] = field(default_factory=list)
    absent_nullable_columns: list[str] = field(default_factory=list)

    rows_read: int = field(init=False)

    def __post_init__(self) -> None:
        # kept apart from the frame, which validation empties once the rows are staged
        self.rows_read = self.frame.height


class MissingColumns(ExportBlocked):
    """A file that was read completely but lacks required columns (its rows are counted)."""

    def __init__(self, faults: list[FileFault], rows_read: int):
        super().__init__(faults)
        self.rows_read = rows_read


def normalise_column_name(name: str) -> str:
    """Header matching rule: case-insensitive after trimming spaces."""
    return name.strip().lower()


def identifier_like_name(name: str) -> str:
    """Column name as the de-identification name pattern sees it."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _fault(export_id: str, file: str, column: str | None, rule: str, detail: str) -> ExportBlocked:
    return ExportBlocked([FileFault(export_id, file, column, rule, detail)])


def _csv_header(path: Path, export_id: str) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise _fault(export_id, path.name, None, "encoding", "the file is not UTF-8") from None
    except (OSError, EOFError, zlib.error):
        raise _fault(export_id, path.name, None, "readable",
                     "the file cannot be read (truncated or corrupt compression)") from None
    except csv.Error:
        raise _fault(export_id, path.name, None, "csv_structure",
                     "the header row cannot be parsed") from None
    if not header or all(not h.strip() for h in header):
        raise _fault(export_id, path.name, None, "readable", "the file is empty (no header row)")
    return header


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _check_duplicate_columns(names: list[str], path: Path, export_id: str) -> None:
    """A column named twice blocks the file. Only contract column names are echoed: an
    unknown header may itself be an identifier (a date, an e-mail)."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if not dup:
        return
    known = {c for t in data_contracts.table_contracts() for c in t.column_names}
    shown = [n if n in known else "(an unknown column)" for n in dup]
    raise _fault(export_id, path.name, ", ".join(dict.fromkeys(shown)), "duplicate_column",
                 "the header names a column more than once")


def _read_csv(path: Path, export_id: str) -> pl.DataFrame:
    fmt = data_contracts.export_format()["csv"]
    header = _csv_header(path, export_id)
    names = [normalise_column_name(h) for h in header]
    _check_duplicate_columns(names, path, export_id)
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(names))) + "}"
    query = (
        f"SELECT * FROM read_csv({_sql_literal(str(path))}, columns={columns}, header=true, "
        "auto_detect=false, "
        f"delim='{fmt['delimiter']}', quote='{fmt['quote']}', escape='{fmt['quote']}', "
        "strict_mode=true, null_padding=false, encoding='utf-8', nullstr='')"
    )
    con = duckdb.connect()
    try:
        frame = con.sql(query).pl()
    except duckdb.Error as exc:  # the engine's text quotes the offending line: never pass it on
        text = str(exc)
        if "unicode" in text.lower() or "utf-8" in text.lower():
            raise _fault(export_id, path.name, None, "encoding", "the file is not UTF-8") from None
        if "gzip" in text.lower() or "IO Error" in text:
            raise _fault(export_id, path.name, None, "readable",
                         "the file cannot be read (truncated or corrupt compression)") from None
        line = re.search(r"CSV Error on Line: (\d+)", text)
        where = f" (first at line {line.group(1)})" if line else ""
        raise _fault(export_id, path.name, None, "csv_structure",
                     "a line has the wrong number of fields or broken quoting" + where) from None
    finally:
        con.close()
    return frame.rename({f"c{i}": n for i, n in enumerate(names)})


def _parquet_as_text(frame: pl.DataFrame, contract: TableContract) -> pl.DataFrame:
    """Render typed Parquet columns as the text a CSV would carry."""
    integer_cols = {c.name for c in contract.columns if c.type == "integer"}
    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if dtype == pl.Boolean:
            expr = pl.when(col).then(pl.lit("true")).when(~col).then(pl.lit("false"))
        elif dtype.is_float() and name in integer_cols:
            whole = col.is_finite() & (col == col.floor())
            expr = pl.when(whole).then(col.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(
                col.cast(pl.String)
            )
        else:
            expr = col.cast(pl.String)
        exprs.append(expr.alias(name))
    return frame.select(exprs)


def _read_parquet(path: Path, contract: TableContract, export_id: str) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except Exception:  # noqa: BLE001 - any reader error means the file cannot be used
        raise _fault(export_id, path.name, None, "readable",
                     "the Parquet file cannot be read (corrupt or truncated)") from None
    names = [normalise_column_name(n) for n in frame.columns]
    _check_duplicate_columns(names, path, export_id)
    frame = frame.rename(dict(zip(frame.columns, names, strict=True)))
    try:
        return _parquet_as_text(frame, contract)
    except pl.exceptions.PolarsError:
        raise _fault(export_id, path.name, None, "readable",
                     "a Parquet column has a type that cannot be read as text") from None


def read_table_file(path: Path, contract: TableContract, export_id: str) -> TableRead:
    """Read one table file; raise :class:`ExportBlocked` on any file-level fault.

    Checks here: readable, UTF-8, field count per line, no duplicate columns, every
    required column present. Absent nullable columns are added as null."""
    if path.name.endswith(".parquet"):
        frame = _read_parquet(path, contract, export_id)
    else:
        frame = _read_csv(path, export_id)
    known = set(contract.column_names)
    missing = [c for c in contract.required_columns if c not in frame.columns]
    if missing:
        hint = ""
        if frame.width == 1 and any(d in frame.columns[0] for d in ";\t|"):
            hint = " (the file seems to use a delimiter other than ',')"
        raise MissingColumns(
            [FileFault(export_id, path.name, c, "missing_column",
                       "required column is absent" + hint) for c in missing],
            rows_read=frame.height,
        )
    absent = [c for c in contract.column_names if c not in frame.columns]
    unknown = [c for c in frame.columns if c not in known]
    frame = frame.with_columns([pl.lit(None, dtype=pl.String).alias(c) for c in absent])
    frame = frame.select(contract.column_names + unknown).with_row_index(SOURCE_ROW, offset=1)
    return TableRead(
        table=contract.name,
        file=path.name,
        frame=frame.with_columns(pl.col(SOURCE_ROW).cast(pl.Int64)),
        unknown_columns=unknown,
        absent_nullable_columns=absent,
    )
