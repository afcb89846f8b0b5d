"""Where a result came from: probe's git commit (when probe runs from a git checkout) and when it was made.

Both are recorded in results.json under ``provenance``. Neither changes a number, so comparisons of two
runs' results leave them out (``without_provenance``).
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

GIT_TIMEOUT_S = 2.0  # a slow or hung git must not hold up a run


def timestamp() -> str:
    """Now, in UTC, as ISO-8601 to the second: ``2026-11-25T20:15:00+00:00``."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout probe is imported from; None for an installed copy, or without git.

    Only a checkout whose top folder holds probe's package counts: a virtualenv inside some other
    project's repository must not report that project's commit."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # a folder, or a file in a git worktree
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and len(commit) == 40 else None


def without_provenance(results: dict) -> dict:
    """A results dict (as in results.json) without the fields that differ between identical runs."""
    return {key: value for key, value in results.items() if key != "provenance"}
