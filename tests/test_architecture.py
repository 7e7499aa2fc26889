"""The package's shape, checked on its source: layers, imports, file names and module sizes.

These are the rules of the README's "Layout" section; each test names what broke it.
"""

from __future__ import annotations

import ast
import re

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "pipeline"
MAX_LINES = 400
# What each layer may import besides itself. `core` knows no stage; `model` (loading and running a
# detector) serves every stage after training; the stages talk to each other only through the
# artifacts of `core.artifacts`; `ops` drives whole stages (sweeps, retraining, data-centric commands).
LAYERS = {
    "core": set(),
    "model": {"core"},
    "data": {"core"},
    "train": {"core", "model"},
    "evaluate": {"core", "model"},
    "deploy": {"core", "model"},
    "ops": {"core", "model", "data", "train", "evaluate"},
}
# Libraries imported inside functions, and why: each costs the commands that never use it.
LAZY_LIBRARIES = {
    "torch": "1-2 s to import; only the commands that run a model need it",
    "ultralytics": "imports torch; must be configured first (pipeline.core.yolo.import_ultralytics)",
    "mlflow": "about 1 s; stages import it only to log",
    "matplotlib": "only where a plot is drawn",
    "cv2": "OpenCV: only where images are decoded or drawn",
    "tensorrt": "optional: present on the deployment device only",
    "openvino": "optional export/runtime backend",
    "nncf": "optional: INT8 quantization only",
    "onnxruntime": "only the ONNX runtime backend",
    "cleanlab": "only the audit command",
    "scipy": "only the scaling fit",
    "faster_coco_eval": "only COCO-style scoring",
    "imagehash": "imports scipy; only near-duplicate checks",
    "pandas": "about 0.5 s; only the bulk label reader",
    "hydra": "only composing conf/",
    "hydra_plugins": "the sweeper plugin imports optuna",
}
# Project modules imported inside functions, and why.
LAZY_MODULES = {
    "pipeline.train.trainer": "subclasses Ultralytics' trainer, so importing it loads Ultralytics"
}
# File names that belong to other tools' formats, not to the pipeline's artifacts.
FOREIGN_FILE_NAMES = {
    "config.txt",  # TorchScript's extra file, where Ultralytics keeps the model's metadata
    "predictions.json",  # what Ultralytics' validator writes
    "classes.txt",  # dataset formats the readers accept
    "data.yaml",
    "dataset.yaml",
    "data.yml",
}
FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(json|csv|md|pt|png|html|yaml|yml|txt|db|onnx|xml|engine)$")


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return found


def imported(node: ast.Import | ast.ImportFrom, known: set[str]) -> list[str]:
    """Names a statement imports; `from pkg import mod` counts as importing `pkg.mod`. The project
    writes absolute imports only (a relative one fails here)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert not node.level, f"line {node.lineno}: relative import; write it absolute"
    base = node.module or ""
    return [base, *(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known)]


def function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [
        node
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]


def top_level_graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    graph = {}
    for name, tree in trees.items():
        statements = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        graph[name] = {t for n in statements for t in imported(n, known) if t in known and t != name}
    return graph


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_imports_inside_functions_are_only_heavy_or_optional_libraries():
    trees = modules()
    known = set(trees)
    unexplained = []
    for name, tree in trees.items():
        for node in function_imports(tree):
            for target in imported(node, known):
                if target.startswith("pipeline"):
                    if target in known and target not in LAZY_MODULES:
                        unexplained.append(f"{name}:{node.lineno} imports {target}")
                elif target.split(".")[0] not in LAZY_LIBRARIES:
                    unexplained.append(f"{name}:{node.lineno} imports {target}")
    assert not unexplained, "move these to the top of the module (or explain them here): " + "; ".join(
        unexplained
    )


def test_no_import_cycles():
    graph = top_level_graph()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles}"


def test_stages_talk_through_artifacts_not_through_each_other():
    crossings = []
    for name, targets in top_level_graph().items():
        own = layer(name)
        if own is None:
            continue
        crossings += [f"{name} imports {t}" for t in targets if layer(t) not in (own, None, *LAYERS[own])]
    assert not crossings, crossings


def names_a_file(node: ast.AST) -> bool:
    text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else ""
    return bool(FILE_NAME.match(text)) and text not in FOREIGN_FILE_NAMES


def test_file_names_are_spelled_only_in_the_catalog():
    spelled = []
    for name, tree in modules().items():
        if name == "pipeline.core.artifacts":
            continue
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            text = (
                isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            )
            if text and FILE_NAME.match(node.value) and node.value not in FOREIGN_FILE_NAMES:
                spelled.append(f"{name}:{node.lineno} {node.value!r}")
    assert not spelled, f"use pipeline.core.artifacts instead: {spelled}"


def test_no_module_is_longer_than_a_page_or_two():
    long = {
        str(path.relative_to(PROJECT_ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these along their sections (at most {MAX_LINES} lines): {long}"


def test_the_rules_see_what_they_check():
    """The checks above parse the real tree; here they must also catch a planted violation."""
    assert "pipeline.train.stage" in top_level_graph()["pipeline.ops.sweep"]
    tree = ast.parse("def f():\n    from pipeline.core import io\n    import numpy\n")
    targets = [t for n in function_imports(tree) for t in imported(n, {"pipeline.core.io"})]
    assert targets == ["pipeline.core", "pipeline.core.io", "numpy"]
    assert layer("pipeline.evaluate.stage") == "evaluate" and layer("pipeline.__main__") is None
