"""SQL files in ``sql/``: the warehouse views and the analysts' named queries.

Values in queries are bound as parameters. The one exception is the lake's location inside the
view definitions: DuckDB cannot bind parameters in DDL, and a view must carry its path so that an
analyst opening the file read-only sees the data. That path is inserted as an escaped string
literal at the single ``{{lake}}`` token, never by formatting arbitrary SQL.

On an object store the warehouse is the single committer of what SQL sees: each ``{{lake}} || '<path
or glob>'`` becomes the list of the immutable objects the manifests publish at build time, so a view
never reads a file half-replaced, and a file published later appears at the next build. The file keeps
the store's endpoint; :func:`connect_read_only` reads it back and gives DuckDB the S3 filesystem
(credentials from the AWS environment).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from nait_pipeline.lib.io.hashing import sha256_tree
from nait_pipeline.lib.io.settings import PROJECT_ROOT
from nait_pipeline.lib.io.storage import is_remote

SQL_DIR = PROJECT_ROOT / "sql"
LAKE_TOKEN = "{{lake}}"
LAKE_REFERENCE = re.compile(r"\{\{lake\}\} \|\| '([^']*)'")
STORE_TABLE = "nait_object_store"  # one row: the endpoint of the object store the views read
# Example values for the named queries that take parameters: documentation and a smoke test.
QUERY_EXAMPLE_PARAMS: dict[str, dict[str, object]] = {
    "top_subset_examples": {"method": "nait", "capability": "math", "k": 20},
    "lineage_of_subset": {"subset_version": "nait-math-000000000000"},
    "protocol_comparison": {"protocol": "cpu-2k"},
    "subset_diff": {"old_version": "nait-math-000000000000", "new_version": "nait-math-111111111111"},
    "explain_selection": {"subset_version": "nait_c-all-000000000000", "example_id": "alpaca_cleaned-000000"},
}


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    return sorted((sql_dir / "views").glob("*.sql"))


def query_names(sql_dir: Path = SQL_DIR) -> list[str]:
    return sorted(p.stem for p in (sql_dir / "queries").glob("*.sql"))


def load_query(name: str, sql_dir: Path = SQL_DIR) -> str:
    """The text of ``sql/queries/<name>.sql``; ``name`` must be one of :func:`query_names`."""
    if name not in query_names(sql_dir):
        raise KeyError(f"no query named {name!r}; available: {query_names(sql_dir)}")
    return (sql_dir / "queries" / f"{name}.sql").read_text()


def sql_version(sql_dir: Path = SQL_DIR) -> str:
    return sha256_tree(list((sql_dir / "views").glob("*.sql")) + list((sql_dir / "queries").glob("*.sql")), sql_dir)[:16]


def render_views(lake_dir: Path, sql_dir: Path = SQL_DIR) -> list[tuple[str, str]]:
    if is_remote(lake_dir):
        def published(match: re.Match) -> str:
            return "[" + ", ".join(sql_literal(uri) for uri in published_objects(lake_dir, match.group(1))) + "]"

        return [(path.name, LAKE_REFERENCE.sub(published, path.read_text())) for path in view_files(sql_dir)]
    lake = sql_literal(str(lake_dir.resolve()))
    return [(path.name, path.read_text().replace(LAKE_TOKEN, lake)) for path in view_files(sql_dir)]


def published_objects(lake_dir, pattern: str) -> list[str]:
    """The object URIs the manifests publish for a path or glob below the lake (sorted by logical name)."""
    fs = lake_dir.fs
    names = sorted(fs.glob(lake_dir.path + pattern)) if any(c in pattern for c in "*?[") else \
        [lake_dir.path + pattern]
    return [fs.uri(fs.object_key(name)) for name in names]


def build_warehouse(db_path: Path, lake_dir: Path, sql_dir: Path = SQL_DIR) -> list[str]:
    """Build the DuckDB file in a temporary file, then rename it into place.

    Readers holding the old file keep reading it; new connections see the new views. No process
    ever waits on DuckDB's single-writer lock of the live file.
    """
    import duckdb

    db_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{db_path.name}.", suffix=".tmp", dir=db_path.parent)
    os.close(fd)
    os.unlink(tmp_name)  # DuckDB must create the file itself
    try:
        with duckdb.connect(tmp_name) as con:
            if is_remote(lake_dir):
                con.register_filesystem(lake_dir.fs.s3)
                con.execute(f"CREATE TABLE {STORE_TABLE} AS SELECT ? AS endpoint_url", [lake_dir.fs.endpoint_url])
            for file_name, text in render_views(lake_dir, sql_dir):
                try:
                    con.execute(text)
                except duckdb.Error as exc:
                    raise RuntimeError(f"sql/views/{file_name} failed: {exc}") from exc
            views = [row[0] for row in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY view_name").fetchall()]
            con.execute("CHECKPOINT")
        # A log beside the live file belongs to a read-write session of the file being replaced that
        # died before a checkpoint; DuckDB would replay it onto the new file and refuse to open it.
        Path(str(db_path) + ".wal").unlink(missing_ok=True)
        os.replace(tmp_name, db_path)
    finally:
        for leftover in (Path(tmp_name), Path(tmp_name + ".wal")):
            leftover.unlink(missing_ok=True)
    return views


def connect_read_only(db_path: Path):
    import duckdb

    if not db_path.exists():
        raise FileNotFoundError(f"no warehouse at {db_path}: materialize the `warehouse` asset first")
    con = duckdb.connect(str(db_path), read_only=True)
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [STORE_TABLE]).fetchone()[0]:
        from nait_pipeline.lib.io.storage import s3_filesystem

        con.register_filesystem(s3_filesystem(con.execute(f"SELECT endpoint_url FROM {STORE_TABLE}").fetchone()[0]))
    return con


def run_query(db_path: Path, name: str, params: dict[str, object] | list | None = None):
    """Run a named query read-only; returns a pyarrow Table."""
    with connect_read_only(db_path) as con:
        return con.execute(load_query(name), params or []).to_arrow_table()
