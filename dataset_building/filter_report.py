"""The JSON report of the sample filters (``filter_identities.py``), read back by ``split_identity_blocks.py``.

One JSON object, written atomically, one top-level key per line and one identity or dropped item per
line (readable, greppable, and ``json.load`` reads it):

* ``format`` / ``version``: ``"idiff-face-filter-report"``, 1.
* ``settings``: the filter settings (:class:`dataset_building.filters.FilterSettings`).
* ``source``: ``{"embeddings": path or null, "n_images", "n_identities", "dim"}``.
* ``counts``: per filter, how many images or identities it dropped, by reason; and what is kept.
* ``identities``: the kept identities in natural name order, each
  ``{"images": images of the identity in the input, "kept": [indices of the kept images], "consistency": c}``;
  an index is the image's position within its identity in the embedding file, which is its tile
  index in a block or its position in natural name order in a class folder (as ``encode.py`` reads them).
* ``dropped_images``: ``{"columns": [...], "rows": [[identity, index, image, reason, cosine, z], ...]}``
  (images dropped by the per-image filter).
* ``dropped_identities``: ``{"columns": [...], "rows": [[identity, filter, reason, value, nearest], ...]}``
  (``nearest``: the kept identity a ``similar_centre`` one is too close to, else null).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.atomic import atomic_file

REPORT_FORMAT = "idiff-face-filter-report"
REPORT_VERSION = 1
IMAGE_COLUMNS = ["identity", "index", "image", "reason", "cosine", "z"]
IDENTITY_COLUMNS = ["identity", "filter", "reason", "value", "nearest"]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass
class FilterReport:
    """What the filters kept and dropped; see the module docstring for each field."""

    settings: dict[str, Any]
    source: dict[str, Any]
    counts: dict[str, Any]
    identities: dict[str, dict[str, Any]]
    dropped_images: list[list[Any]]
    dropped_identities: list[list[Any]]

    @property
    def kept_images(self) -> int:
        """Images kept over all kept identities."""
        return sum(len(entry["kept"]) for entry in self.identities.values())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report atomically (temporary file beside ``path``, then rename)."""
        with atomic_file(path, "w") as f:
            f.write(f'{{"format":{_dumps(REPORT_FORMAT)},\n"version":{REPORT_VERSION},\n')
            for key in ("settings", "source", "counts"):
                f.write(f'"{key}":{_dumps(getattr(self, key))},\n')
            f.write('"identities":{')
            f.write(",".join(f"\n{_dumps(name)}:{_dumps(entry)}" for name, entry in self.identities.items()))
            for key, columns, rows in (("dropped_images", IMAGE_COLUMNS, self.dropped_images),
                                       ("dropped_identities", IDENTITY_COLUMNS, self.dropped_identities)):
                f.write(f'}},\n"{key}":{{"columns":{_dumps(columns)},"rows":[')
                f.write(",".join(f"\n{_dumps(row)}" for row in rows))
                f.write("]")
            f.write("}}\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FilterReport:
        """Read and check a report; a wrong or damaged file is one error line naming it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"filter report {path} does not exist; write it with filter_identities.py")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a readable filter report (JSON): {err}") from None
        if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
            raise ValueError(f"{path} is not a filter report: expected format {REPORT_FORMAT!r}")
        if data.get("version") != REPORT_VERSION:
            raise ValueError(f"{path}: filter report version {data.get('version')!r}, this toolkit reads {REPORT_VERSION}")
        missing = sorted({"settings", "source", "counts", "identities", "dropped_images", "dropped_identities"} - set(data))
        if missing:
            raise ValueError(f"{path}: filter report lacks {missing}")
        for name, entry in data["identities"].items():
            kept, n = entry.get("kept"), entry.get("images")
            if (not isinstance(n, int) or not isinstance(kept, list)
                    or not all(isinstance(k, int) and 0 <= k < n for k in kept) or len(set(kept)) != len(kept)):
                raise ValueError(f"{path}: identity {name!r} needs 'images' (int) and distinct 'kept' indices in "
                                 f"[0, images), found images={n!r}, kept={str(kept)[:60]}")
        return cls(data["settings"], data["source"], data["counts"], data["identities"],
                   data["dropped_images"]["rows"], data["dropped_identities"]["rows"])
