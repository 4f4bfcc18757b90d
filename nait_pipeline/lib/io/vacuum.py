"""Reclaim what no table needs any more: objects no manifest names, and the temporary files of killed writers.

On an object store every write leaves the object it replaced (objects are immutable and content-named), and
``rm`` only unpublishes a manifest. An object is deleted after it was found unreferenced by two vacuums at least
``grace`` apart (mark, then sweep): the first one records when it saw the object unreferenced in
``<lake>/_vacuum/marks.json``, a later one deletes it if it is still unreferenced. The grace protects a reader
that resolved a manifest just before a newer one replaced it and is still reading the old object by range,
and a writer whose object is uploaded but whose manifest is not put yet. An object that a manifest names
again (the same bytes published anew) is unmarked. A run that publishes, during the seconds a sweep takes,
bytes identical to an object marked ``grace`` ago can lose its object (the writer skips uploading an object
that exists); run vacuums when no run is writing, e.g. on a schedule at a quiet hour.

Locally, files are replaced by rename, so the only leftovers are the temporary files (``.<name>.*.tmp``) and
folders of writers killed before they renamed them; they are deleted once untouched for ``grace``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from nait_pipeline.lib.io.storage import MANIFESTS, OBJECTS, LakeFileSystem

MARKS = "_vacuum/marks.json"


@dataclass
class VacuumReport:
    where: str
    dry_run: bool
    deleted: list[str] = field(default_factory=list)  # object keys or local paths (would be, in a dry run)
    deleted_bytes: int = 0
    marked: int = 0  # unreferenced objects seen for the first time, or within their grace
    referenced: int = 0  # objects a manifest names

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{self.where}: {verb} {len(self.deleted)} ({self.deleted_bytes / 2**20:,.1f} MiB); "
                f"{self.marked} unreferenced within their grace (marked); {self.referenced} referenced")


def vacuum_object_store(fs: LakeFileSystem, grace_s: float, dry_run: bool = False,
                        now: float | None = None) -> VacuumReport:
    """Mark and sweep the objects of the lake at ``fs.root`` (see the module docstring)."""
    now = time.time() if now is None else now
    report = VacuumReport(f"s3://{fs.root}", dry_run)
    fs.s3.invalidate_cache(fs.root)  # listings cached by this process's earlier reads may miss new files
    manifest_keys = fs._call("list", f"{fs.root}/{MANIFESTS}", fs.s3.find, f"{fs.root}/{MANIFESTS}")
    bodies = fs._call("read", f"{fs.root}/{MANIFESTS}", fs.s3.cat, manifest_keys) if manifest_keys else {}
    referenced = {json.loads(body)["object"] for body in bodies.values()}
    objects = fs._call("list", f"{fs.root}/{OBJECTS}", fs.s3.find, f"{fs.root}/{OBJECTS}", detail=True)
    marks_key = f"{fs.root}/{MARKS}"
    try:
        marks = json.loads(fs._call("read", marks_key, fs.s3.cat_file, marks_key))
    except FileNotFoundError:
        marks = {}
    kept: dict[str, float] = {}
    doomed: list[str] = []
    for key, info in sorted(objects.items()):
        if key in referenced:
            report.referenced += 1
        elif key in marks and now - marks[key] >= grace_s:
            doomed.append(key)
            report.deleted_bytes += int(info.get("size") or 0)
        else:
            kept[key] = marks.get(key, now)
    report.deleted, report.marked = doomed, len(kept)
    if not dry_run:
        if doomed:
            fs._call("delete", doomed[0], fs.s3.rm, doomed)
        fs._call("write", marks_key, fs.s3.pipe_file, marks_key, json.dumps(kept, sort_keys=True).encode())
    return report


def vacuum_local(folder: Path, grace_s: float, dry_run: bool = False, now: float | None = None) -> VacuumReport:
    """Delete killed writers' temporary files and folders under ``folder`` untouched for ``grace_s``."""
    now = time.time() if now is None else now
    report = VacuumReport(str(folder), dry_run)
    if not folder.exists():
        return report
    for path in sorted(folder.rglob(".*.tmp")):
        if not path.exists():  # inside a temporary folder deleted just before
            continue
        newest, size = _newest_mtime_and_size(path)
        if now - newest < grace_s:
            report.marked += 1
            continue
        report.deleted.append(str(path))
        report.deleted_bytes += size
        if not dry_run:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return report


def _newest_mtime_and_size(path: Path) -> tuple[float, int]:
    if not path.is_dir():
        stat = path.stat()
        return stat.st_mtime, stat.st_size
    newest, size = path.stat().st_mtime, 0
    for inner in path.rglob("*"):
        stat = inner.stat()
        newest = max(newest, stat.st_mtime)
        size += stat.st_size if inner.is_file() else 0
    return newest, size


def vacuum(settings, grace_s: float, dry_run: bool = False) -> list[VacuumReport]:
    """Vacuum a store: its object-store lake (if any) and this machine's folder."""
    reports = []
    if settings.on_object_store:
        reports.append(vacuum_object_store(settings.lake_dir.fs, grace_s, dry_run))
    reports.append(vacuum_local(Path(settings.work_dir), grace_s, dry_run))
    return reports
