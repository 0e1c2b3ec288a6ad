"""Imports go one way, up the stack of layers (README, "Layout"): no module imports from a layer above its
own, not even lazily inside a function, and the roles do not import each other."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Bottom to top; the packages of one layer are peers that do not import each other.
LAYERS = [("configs",), ("tasks",), ("models",), ("actors", "rewards", "learners", "compress"), ("evals",), ("cluster",),
          ("benches",), ("cli",)]
LAYER = {package: i for i, layer in enumerate(LAYERS) for package in layer}


def imports(path: Path, package: str):
    """(line, top-level package) of every import statement in the file, wherever it sits."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, package if node.level else node.module.split(".")[0]


def test_every_package_has_a_layer():
    assert {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"} == set(LAYER)


def test_no_module_imports_from_its_own_layer_or_above():
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for package in LAYER for path in sorted((ROOT / package).rglob("*.py"))
             for line, target in imports(path, package)
             if target in LAYER and target != package and LAYER[target] >= LAYER[package]]
    order = " < ".join("/".join(layer) for layer in LAYERS)
    assert not wrong, f"imports against the layers ({order}):\n" + "\n".join(wrong)
