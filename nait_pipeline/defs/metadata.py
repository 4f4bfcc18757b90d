"""Small helpers that turn tables into Dagster metadata a person can read in the UI."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pyarrow as pa

PREVIEW_CHARS = 80


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


def markdown_table(table: pa.Table, rows: int = 5) -> dg.MarkdownMetadataValue:
    head = table.slice(0, rows).to_pylist()
    names = table.column_names
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(_cell(record[n]) for n in names) + " |" for record in head]
    return dg.MetadataValue.md("\n".join(lines))


def table_schema(table: pa.Table) -> dg.TableSchemaMetadataValue:
    return dg.MetadataValue.table_schema(
        dg.TableSchema(columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in table.schema])
    )


def path_value(path: Path) -> dg.PathMetadataValue:
    return dg.MetadataValue.path(str(path))
