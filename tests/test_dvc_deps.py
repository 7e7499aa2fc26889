"""dvc.yaml's code deps cover every project file a stage's command imports, so no code change can
leave `dvc repro` saying "up to date" when it is not.

The imports are followed statically (every `import`/`from` statement, those inside functions too:
heavy libraries are imported lazily, and project modules sometimes are), from the module that
`python -m pipeline <stage>` runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.__main__ import COMMANDS
from tests.conftest import PROJECT_ROOT

DVC_FILES = (PROJECT_ROOT / "dvc.yaml", PROJECT_ROOT / "deploy" / "dvc.yaml")
# The package's own __init__ holds only its version string: changing it changes no output.
INERT = {PROJECT_ROOT / "pipeline" / "__init__.py"}


def module_file(module: str) -> Path | None:
    base = PROJECT_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules named by the import statements of one file (`from pipeline.x import y`
    may import the module `pipeline.x.y`, so both are returned when they exist)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] == "pipeline" and module_file(name)}


def closure(module: str) -> set[Path]:
    """Every project file reachable from `module`, with the packages' __init__ files on the way."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(imported_modules(module_file(name)))
    return {module_file(name) for name in seen}


def stage_code_deps(stage: dict) -> list[Path]:
    return [PROJECT_ROOT / dep for dep in stage.get("deps", []) if str(dep).startswith("pipeline")]


def stages() -> list[tuple[str, dict]]:
    found = []
    for dvc_file in DVC_FILES:
        for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
            found.append((name, stage))
    return found


@pytest.mark.parametrize(("name", "stage"), stages(), ids=[name for name, _ in stages()])
def test_stage_deps_cover_every_imported_project_file(name, stage):
    command = stage["cmd"].split(" -m pipeline ")[1].split()[0]
    files = closure(COMMANDS[command][0]) | {PROJECT_ROOT / "pipeline" / "__main__.py"}
    deps = stage_code_deps(stage)
    uncovered = sorted(
        str(f.relative_to(PROJECT_ROOT))
        for f in files - INERT
        if f.name != "__init__.py" or f.stat().st_size
        if not any(f == dep or dep in f.parents for dep in deps)
    )
    assert not uncovered, f"stage {name!r} imports files its deps do not list: {uncovered}"


def test_the_closure_follows_imports_inside_functions():
    """The check above would pass vacuously if lazy imports were missed: the train stage imports its
    Ultralytics trainer lazily, so the closure must contain it."""
    assert PROJECT_ROOT / "pipeline" / "train" / "trainer.py" in closure("pipeline.train.stage")
