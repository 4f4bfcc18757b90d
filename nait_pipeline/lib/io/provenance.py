"""Which code made a result: the git commit of the project (with "+dirty" for uncommitted changes)."""

from __future__ import annotations

import functools
import subprocess

from nait_pipeline.lib.io.settings import PROJECT_ROOT


@functools.lru_cache(maxsize=1)
def code_commit() -> str:
    """The commit the project was running from; "unknown" outside a git checkout (an installed wheel)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "nait_pipeline", "sql"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
