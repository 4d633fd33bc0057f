"""The package's import graph: dependencies flow one way (docs/architecture.md).

Read from the source with ``ast`` (every import, function-level ones included, except those
under ``if TYPE_CHECKING:``), so a lazy import that closes a circle is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ctxcompress"

# The bottom layer: what every other module may use. None of them may import a layer above.
PRIMITIVES = (
    "ctxcompress.version",
    "ctxcompress.errors",
    "ctxcompress.atomic",
    "ctxcompress.normalization",
    "ctxcompress.tiny_models",
    "ctxcompress.embedded",
    "ctxcompress.models",
    "ctxcompress.positions",
    "ctxcompress.masks",
    "ctxcompress.windows",
    "ctxcompress.rope",
    "ctxcompress.shipped",
    "ctxcompress.quantization",
    "ctxcompress.context",
)
UPPER_LAYERS = (
    "ctxcompress.methods",
    "ctxcompress.training",
    "ctxcompress.evaluation",
    "ctxcompress.serving",
    "ctxcompress.bench",
    "ctxcompress.cli",
    "ctxcompress.demo",
    "ctxcompress.testing",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at run time."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets = [f"{module}.{a.name}" for a in node.names] + [module]
            else:
                module = node.module or ""
                targets = [f"{module}.{a.name}" for a in node.names] + [module]
            # "from .x import y" depends on module x.y when that is a module, else on x.
            for target in targets:
                if target in files and target != name:
                    deps.add(target)
                    break
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return components


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .a import A\n"
        "def f():\n    from .b import B\n"
    )
    modules = [n.module for n in _runtime_imports(tree)]
    assert modules == ["typing", "b"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_the_package_has_no_import_circle():
    assert _cycles(import_graph()) == []


def test_primitives_import_no_layer_above_them():
    graph = import_graph()
    upward = {
        module: sorted(d for d in graph[module] if d.startswith(UPPER_LAYERS))
        for module in PRIMITIVES
    }
    assert {m: d for m, d in upward.items() if d} == {}


def test_only_tests_use_the_test_kit():
    users = [m for m, deps in import_graph().items() if "ctxcompress.testing" in deps]
    assert users == []


COMPRESSOR_NAMES = {"comp", "compressor", "student", "teacher", "loaded"}


def test_no_module_outside_methods_reads_a_compressors_private_attributes():
    """Harnesses (training, evaluation, serving, cli, ...) use the compressor's public API
    only: no ``comp._x`` / ``self.compressor._x`` outside ``ctxcompress.methods``."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if _module_name(path).startswith("ctxcompress.methods"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__"):
                continue
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if name in COMPRESSOR_NAMES:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, offenders
