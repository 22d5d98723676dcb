"""The reference data ships with the project: every indexed file is present and unchanged, none is read from outside."""
from __future__ import annotations

import hashlib
import json
import re

from tests.conftest import PROJECT_ROOT, REFERENCE_DIR


def test_every_indexed_fixture_is_present_and_unchanged() -> None:
    index = json.loads((REFERENCE_DIR / "fixtures" / "INDEX.json").read_text())
    assert sorted(index) == sorted(p.name for p in (REFERENCE_DIR / "fixtures").glob("*.pt"))
    for name, entry in index.items():
        data = (REFERENCE_DIR / "fixtures" / name).read_bytes()
        assert len(data) == entry["bytes"], name
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name


def test_every_indexed_manifest_is_present() -> None:
    index = json.loads((REFERENCE_DIR / "manifests" / "INDEX.json").read_text())
    listed = sorted(k for k in index if not k.startswith("_"))
    assert listed == sorted(p.name for p in (REFERENCE_DIR / "manifests").glob("*.json") if p.name != "INDEX.json")
    for name in listed:
        entries = json.loads((REFERENCE_DIR / "manifests" / name).read_text())
        assert entries and all(len(entry) == 3 for entry in entries), name  # [key, shape, dtype]


def test_no_test_reads_outside_the_project() -> None:
    """A fresh clone runs every reference test: no test looks for data beside the checkout."""
    outside = re.compile(r"""["']shared["']|\.\./shared|parents\[[3-9]\]""")
    sources = sorted((PROJECT_ROOT / "tests").rglob("*.py"))
    offenders = [str(p.relative_to(PROJECT_ROOT)) for p in sources if outside.search(p.read_text())]
    assert offenders == []
