"""The library's import graph, tested: no cycle among its modules (so imports sit at the
top of modules, in the order the layers go), and no module of it imports a name through a
deprecated path (`loopline._moved`: those are for task packages written before)."""

from __future__ import annotations

import ast
import graphlib
import importlib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "src" / "loopline"
DEPRECATED = {
    "loopline.serving_adapter",
    "loopline.evaluate",
    "loopline.export",
    "loopline.validate",
    "loopline.features",
    "loopline.labeling",
    "loopline.train",
    "loopline.reference",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIBRARY.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in sorted(LIBRARY.rglob("*.py"))
        if "templates" not in path.relative_to(LIBRARY).parts
    }


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:`: never run, so never part of an import cycle."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skip


def imported_names(path: Path) -> list[str]:
    """Every dotted name a module imports at run time, wherever the import statement is."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    names = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def import_graph() -> dict[str, set[str]]:
    """Module → the library modules it imports (a name inside a module counts as it)."""
    modules = library_modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        found = {owner(n) for n in imported_names(path) if n.startswith("loopline")}
        graph[name] = {m for m in found if m is not None and m != name}
    return graph


def test_the_library_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 60 and any(graph.values())  # it read the library, edges included
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_the_cycle_check_sees_a_cycle():
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter({"a": {"b"}, "b": {"c"}, "c": {"a"}}).static_order())


def test_the_library_never_imports_through_a_deprecated_path():
    found = [
        f"{name}: {imported}"
        for name, path in library_modules().items()
        if name not in DEPRECATED | {"loopline.contract"}
        for imported in imported_names(path)
        if imported in DEPRECATED or imported.rpartition(".")[0] in DEPRECATED
    ]
    assert not found, "deprecated paths used inside the library:\n" + "\n".join(found)


def test_each_layer_says_what_it_is():
    for layer in ("offline", "online", "watch", "app", "tasks"):
        doc = importlib.import_module(f"loopline.{layer}").__doc__
        assert doc and len(doc.split()) > 20, f"loopline.{layer} has no paragraph saying what it is"


OLD_CONTRACT = """
from loopline.config import Dimension, Section, load_params, parse_params
from loopline.evaluate import Evaluation, evaluate_classifier
from loopline.export import run_onnx
from loopline.features import FeatureSpec
from loopline.labeling import Examples
from loopline.online import LoadedModel
from loopline.serving_adapter import Answer, BadInput, Serving, StreamState
from loopline.validate import Rule
"""


def test_an_old_import_path_works_and_names_the_new_place():
    """A task package written against the layout before (its imports as they were) gets the
    same objects, each with a DeprecationWarning naming where it lives now."""
    namespace: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(OLD_CONTRACT, "old_task.py", "exec"), namespace)
    contract = importlib.import_module("loopline.contract")
    for name in ("Evaluation", "FeatureSpec", "Examples", "LoadedModel", "Serving", "Rule"):
        assert namespace[name] is getattr(contract, name)
    said = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    for old, new in [
        ("loopline.serving_adapter.Serving", "loopline.online.adapter.Serving"),
        ("loopline.evaluate.Evaluation", "loopline.offline.evaluate.Evaluation"),
        ("loopline.online.LoadedModel", "loopline.online.models.LoadedModel"),
        ("loopline.config.load_params", "loopline.params.load_params"),
    ]:
        assert any(old in text and new in text for text in said), (old, said)
    assert all(w.filename == "old_task.py" for w in caught if "moved to" in str(w.message))
