"""Resume-by-stage for the demo: a JSON state file records each finished stage, its result and its time.

``<output_dir>/demo_state.json`` holds a fingerprint of the demo settings and, per finished stage,
``{"seconds": float, "result": {...}}``. A run skips the stages recorded there; a stage that was
interrupted is run again (the library functions it calls skip the work they find finished, e.g.
sampled identities, encoded shards, training checkpoints). When the settings differ from the
recorded fingerprint the earlier outputs do not belong to this run, and the demo starts over.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from utils.atomic import write_json_atomic

log = logging.getLogger(__name__)

STATE_FILE = "demo_state.json"


def fingerprint(settings: Mapping[str, Any]) -> str:
    """sha256 of the settings as sorted JSON: equal settings, equal fingerprint."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class StageState:
    """The state file of one demo output folder.

    Args:
        output_dir: the demo's output folder (``demo.output_dir``).
        settings_fingerprint: :func:`fingerprint` of the settings of this run.
    """

    def __init__(self, output_dir: str | os.PathLike, settings_fingerprint: str) -> None:
        self.path = Path(output_dir) / STATE_FILE
        self.fingerprint = settings_fingerprint
        self.stages: dict[str, dict[str, Any]] = {}
        self.stale = False
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{self.path} is not valid JSON ({err}); delete it to start the demo over") from None
            if data.get("fingerprint") == settings_fingerprint:
                self.stages = dict(data.get("stages", {}))
            else:
                self.stale = True

    def done(self, stage: str) -> bool:
        """Whether ``stage`` finished in an earlier run with these settings."""
        return stage in self.stages

    def result(self, stage: str) -> dict[str, Any]:
        """What ``stage`` returned (paths as strings, numbers); raises when it has not run."""
        if stage not in self.stages:
            raise KeyError(f"demo stage {stage!r} has not finished; its result is not in {self.path}")
        return self.stages[stage]["result"]

    def results(self) -> dict[str, dict[str, Any]]:
        """``{stage: result}`` of every finished stage."""
        return {name: entry["result"] for name, entry in self.stages.items()}

    def seconds(self) -> dict[str, float]:
        """Wall-clock seconds of every finished stage, in the order they finished."""
        return {name: float(entry["seconds"]) for name, entry in self.stages.items()}

    def record(self, stage: str, result: Mapping[str, Any], seconds: float) -> None:
        """Mark ``stage`` finished with its ``result`` and time, and write the state file."""
        self.stages[stage] = {"seconds": round(float(seconds), 3), "result": dict(result)}
        write_json_atomic(self.path, {"fingerprint": self.fingerprint, "stages": self.stages})
