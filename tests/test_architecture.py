"""The floors of docs/architecture.md: every import between the project's packages goes down, never up or sideways.

The test reads every module's import statements (``ast``, nothing is imported), maps them to the
project's top-level packages and fails on an import that the table below does not allow. Since
every allowed import points to a lower floor, this also rules out cycles between packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> the project packages it may import (its own always allowed); the floors of docs/architecture.md
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "models": {"utils"},
    "alignment": {"utils"},
    "embedding": {"utils", "models", "alignment"},
    "evaluation": {"utils", "embedding"},
    "contexts": {"utils", "embedding"},
    "dataset_building": {"utils", "alignment", "embedding", "evaluation"},
    "diffusion": {"utils", "models", "alignment", "embedding", "contexts", "dataset_building"},
    "face_recognition_training": {"utils", "models", "evaluation", "dataset_building"},
    "testbed": {"utils", "models", "alignment", "embedding", "evaluation", "contexts", "diffusion"},
}
APPLICATIONS = {"cpu_demo", "cli"}  # may import every package below; no package imports them
PACKAGES = set(ALLOWED) | APPLICATIONS


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages named by the import statements of ``path`` (also those inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & PACKAGES


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_every_package_is_in_the_table() -> None:
    on_disk = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert on_disk <= PACKAGES, f"packages missing from ALLOWED (and docs/architecture.md): {on_disk - PACKAGES}"
    assert PACKAGES <= on_disk, f"packages in ALLOWED that do not exist: {PACKAGES - on_disk}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_go_down_only(package: str) -> None:
    allowed = ALLOWED.get(package, PACKAGES - APPLICATIONS) | {package}
    wrong = {f"{path.relative_to(ROOT)} imports {sorted(imported_packages(path) - allowed)}"
             for path in modules_of(package) if imported_packages(path) - allowed}
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_the_table_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(package: str, stack: tuple[str, ...]) -> None:
        assert package not in stack, f"import cycle: {' -> '.join(stack + (package,))}"
        if package not in done:
            for below in ALLOWED[package]:
                visit(below, stack + (package,))
            done.add(package)

    for package in ALLOWED:
        visit(package, ())


def test_utils_is_a_small_ground_floor() -> None:
    lines = sum(len(p.read_text().splitlines()) for p in modules_of("utils"))
    assert lines < 1000, f"utils/ has {lines} lines; it holds only the generic ground floor"


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from diffusion.ddpm import x\n    import models.iresnet\n")
    assert imported_packages(module) == {"diffusion", "models"}
