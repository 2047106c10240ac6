"""Architecture: who may import whom between the rooms, no import cycles, and the size limits (docs/architecture.md).

Every .py under receiver/, model/, storage/ and sim/ is parsed with `ast`; imports count at any depth, including
inside functions (a lazy import is still a dependency). `if TYPE_CHECKING:` blocks count for the room rules (a
type-only import still ties one room to another's internals) but not for the cycle check (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("receiver", "model", "storage", "sim")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
LONG_MARKER = "long:"

# What each room may import from otad's own packages (a room may always import itself).
SIM_MAY_IMPORT = {"model.schema", "receiver.otlp.otlpjson"}  # the row contract and the public OTLP/JSON codec
SIM_FROM_RECEIVER = "receiver.cli"  # `otad simulate`, and only lazily (inside a function)


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's target, resolved to an absolute dotted name."""

    source: str  # importing module, e.g. receiver.otlp.handler
    target: str  # imported module (or module.name), e.g. receiver.rows.mapper
    line: int
    lazy: bool  # inside a function
    type_only: bool  # inside `if TYPE_CHECKING:`

    def where(self) -> str:
        return f"{self.source.replace('.', '/')}.py:{self.line}"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    return sorted(p for room in ROOMS for p in (ROOT / room).rglob("*.py") if ".venv" not in p.parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path = ROOT) -> Iterator[Import]:
    """Every import in one file, with whether it sits inside a function or an `if TYPE_CHECKING:` block."""
    module, is_package = module_name(path, root), path.name == "__init__.py"

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, lazy, type_only)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node)
            for alias in node.names:
                target = base if alias.name == "*" else f"{base}.{alias.name}"
                yield Import(module, target, node.lineno, lazy, type_only)
        for child in ast.iter_child_nodes(node):
            in_function = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            in_type_block = type_only or (
                isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body
            )
            yield from visit(child, in_function, in_type_block)

    yield from visit(ast.parse(path.read_text(), str(path)), False, False)


def own_module(target: str, modules: set[str]) -> str | None:
    """The otad module an import target lands in: `pkg.mod.name` -> `pkg.mod`; None for third-party names."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def all_imports() -> tuple[set[str], list[Import]]:
    files = source_files()
    modules = {module_name(p) for p in files}
    found = []
    for path in files:
        for imp in imports_of(path):
            target = own_module(imp.target, modules)
            if target is not None and target != imp.source:
                found.append(Import(imp.source, target, imp.line, imp.lazy, imp.type_only))
    return modules, found


def room_violation(imp: Import) -> str | None:
    """Why one import breaks the room rules, or None."""
    src, dst = imp.source.split(".")[0], imp.target.split(".")[0]
    if src == dst:
        return None
    if src in ("model", "storage"):
        return f"{src}/ imports only {src}/"
    if src == "sim":
        if imp.target in SIM_MAY_IMPORT:
            return None
        return "sim/ imports only sim/, model.schema and receiver.otlp.otlpjson"
    if src == "receiver" and dst == "sim":
        if imp.source == SIM_FROM_RECEIVER and imp.lazy:
            return None
        return "only receiver/cli.py imports sim/, and only inside a function"
    return None


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); returns the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_rooms_import_only_what_they_may():
    _, found = all_imports()
    bad = [f"{imp.where()} imports {imp.target}: {why}" for imp in found if (why := room_violation(imp))]
    assert not bad, "import rules broken (docs/architecture.md):\n" + "\n".join(bad)


def test_no_import_cycles():
    modules, found = all_imports()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in found:
        if not imp.type_only:
            graph[imp.source].add(imp.target)
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles between otad modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_file_over_the_line_limit():
    long_files = [
        f"{p.relative_to(ROOT)}: {n} lines"
        for p in source_files()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert not long_files, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(long_files)


def test_no_function_over_the_line_limit_without_a_reason():
    long_functions = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and LONG_MARKER not in (ast.get_docstring(node) or ""):
                long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long_functions, (
        f"functions over {MAX_FUNCTION_LINES} lines without `{LONG_MARKER} <reason>` in their docstring:\n"
        + "\n".join(long_functions)
    )


def test_the_checker_sees_lazy_relative_and_type_only_imports(tmp_path):
    """The parser itself: an import inside a function, a relative import and a TYPE_CHECKING import are found."""
    pkg = tmp_path / "receiver"
    pkg.mkdir()
    code = (
        "from typing import TYPE_CHECKING\nfrom .rows import mapper\nif TYPE_CHECKING:\n    import model.x\n"
        "def f():\n    import sim.world\n"
    )
    (pkg / "cli.py").write_text(code)
    got = {(i.target, i.lazy, i.type_only) for i in imports_of(pkg / "cli.py", tmp_path)}
    assert {
        ("receiver.rows.mapper", False, False),
        ("model.x", False, True),
        ("sim.world", True, False),
    } <= got
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
