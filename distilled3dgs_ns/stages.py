"""Bookkeeping that makes ``distilled3dgs-run`` resumable: one JSON record per finished stage.

A stage is finished exactly when its record exists. Records are written atomically (temporary file, then rename), so
a crash leaves either no record (the stage runs again) or a complete one (it is skipped). Each record keeps the
*fingerprint* of what the stage was asked to do; re-running with other settings is refused instead of silently
mixing the results of two configurations in one report.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distilled3dgs_ns.durable import write_atomic
from distilled3dgs_ns.errors import UserError


class RunSetupError(UserError):
    """A problem with the user's input or the output folder; the message says what to do."""


def fingerprint(value: Any) -> str:
    """A short stable hash of a JSON-serialisable description of a stage's work."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, value: Any) -> None:
    """Write ``value`` as JSON so that readers see the old file or the complete new one, never half of it."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


@dataclass
class StageBook:
    """The finished-stage records of one output folder (``<output-dir>/stages/<name>.json``)."""

    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def get(self, name: str) -> dict[str, Any] | None:
        """The record of a finished stage, or None if it has not finished."""
        path = self.path(name)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RunSetupError(
                f"the record of stage '{name}' ({path}) is not valid JSON ({error}); delete it to run the stage again"
            ) from error

    def check(self, name: str, expected: str, also: str | None = None) -> dict[str, Any] | None:
        """The record if ``name`` finished with fingerprint ``expected`` (or ``also``, the form an older version
        recorded); None if unfinished; an error if different."""
        record = self.get(name)
        if record is not None and record.get("fingerprint") not in (expected, also):
            raise RunSetupError(
                f"stage '{name}' in {self.folder.parent} was finished with other settings than this command's. "
                f"Re-run with the original settings, pass --redo {name} to run it (and what depends on it) again, "
                "or choose a new --output-dir."
            )
        return record

    def finish(self, name: str, expected: str, **figures: Any) -> dict[str, Any]:
        """Record ``name`` as finished; ``figures`` (wall time, paths) are kept for the report."""
        record = {"stage": name, "fingerprint": expected, **figures}
        write_json_atomic(self.path(name), record)
        return record

    def forget(self, name: str) -> bool:
        """Drop the record of ``name`` so that it runs again; True if there was one."""
        path = self.path(name)
        if path.exists():
            path.unlink()
            return True
        return False
