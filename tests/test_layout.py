"""The package stays laid out by stage: every import among tracesock's modules, read with
``ast`` (imports inside functions included), points down the layer order, and no module
takes part in an import cycle.

The order (tracesock/__init__.py says it in prose):

    errors <- patching <- trace <- capture <- record
                          trace <- replay
    all of the above <- lecture <- cli, plugin, __init__, __main__, _bootstrap

``if TYPE_CHECKING:`` blocks are not counted: they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tracesock"

# What each layer may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "patching": {"errors"},
    "trace": {"errors"},
    "capture": {"errors", "trace"},
    "record": {"errors", "patching", "trace", "capture"},
    "replay": {"errors", "patching", "trace"},
    "lecture": {"errors", "patching", "trace", "capture", "record", "replay"},
    "top": {"errors", "patching", "trace", "capture", "record", "replay", "lecture", "top"},
}
STAGES = ("trace", "record", "capture", "replay", "lecture")
MAX_LINES = 440  # "about 400": TracedSocket and Recorder are one class each, a little over


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "top"
    if parts[1] in STAGES:
        return parts[1]
    if parts[1] in ("errors", "patching"):
        return parts[1]
    return "top"  # cli, plugin, __main__, _bootstrap


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside the body (not the else) of ``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:``."""
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.If) and node in parent.body and \
                ast.unparse(parent.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            return True
        node = parent
    return False


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported tracesock module, line) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when there is one.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source
                       for a in node.names]
        for target in targets:
            if target.split(".")[0] == "tracesock" and target in known:
                yield target, node.lineno


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _ in imports_of(name, path, known):
            if target != name:
                edges[name].add(target)
    return edges


def test_every_import_points_down_the_layers() -> None:
    mods = modules()
    known = set(mods)
    wrong = []
    for name, path in mods.items():
        for target, line in imports_of(name, path, known):
            src, dst = layer(name), layer(target)
            if src != dst and dst not in ALLOWED[src]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} ({src}) "
                             f"imports {target} ({dst})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle() -> None:
    edges = graph()
    # A package's __init__ importing its own modules is not a cycle with them unless a
    # module imports the package back, which the graph would show.
    assert _cycles(edges) == []


def test_the_checker_sees_cycles_and_upward_imports(tmp_path: Path) -> None:
    """The two checks above can fail: a cycle and an upward import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    pkg = tmp_path / "tracesock" / "trace"
    pkg.mkdir(parents=True)
    bad = pkg / "reader.py"
    bad.write_text("def f():\n    from ..lecture import show\n")
    known = {"tracesock.trace.reader", "tracesock.lecture.show", "tracesock.lecture"}
    found = list(imports_of("tracesock.trace.reader", bad, known))
    assert found == [("tracesock.lecture.show", 2)]
    assert layer("tracesock.lecture.show") not in ALLOWED[layer("tracesock.trace.reader")]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_opens_with_a_theory_of_operation(stage: str) -> None:
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
    assert doc and "Theory of operation" in doc
    for path in sorted((PACKAGE / stage).glob("*.py")):
        if path.name != "__init__.py":
            assert f"``{path.name}``" in doc, f"{stage}/__init__.py does not name {path.name}"


def test_no_module_is_much_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


# What tracesock replaces in the program's world: attributes of these modules (and of
# their classes, such as ssl.SSLContext) are only ever assigned in patching.py.
PATCHED_MODULES = ("socket", "ssl", "os", "time", "random", "datetime", "_socket")


def _patched_names(tree: ast.AST) -> Iterator[tuple[str, int]]:
    """``module.attr...`` assigned (plainly, in a tuple, or by ``setattr``/``delattr``)
    for the modules above; not ``os.environ[...]`` (a child's environment, not a swap)."""
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("setattr", "delattr") \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            targets = [ast.Attribute(value=node.args[0], attr=str(node.args[1].value))]
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Attribute) and \
                    ast.unparse(target).split(".")[0] in PATCHED_MODULES:
                yield ast.unparse(target), getattr(node, "lineno", 0)


def test_one_place_patches_the_program_s_world() -> None:
    """Only patching.py assigns ``socket.socket``, ``ssl``'s classes, ``os.urandom``,
    ``time.time``, ``datetime.datetime``... (also through ``setattr``)."""
    found = sorted({(str(path.relative_to(PACKAGE)), name, line)
                    for path in PACKAGE.rglob("*.py")
                    for name, line in _patched_names(ast.parse(path.read_text()))})
    assert {f for f, _, _ in found} == {"patching.py"}, found


def test_the_patch_check_sees_assignments_and_setattr() -> None:
    code = ("import os, socket, ssl\nsocket.socket = X\nsetattr(os, 'urandom', f)\n"
            "ssl.SSLContext.sslsocket_class = Y\nself.socket = 1\n")
    assert sorted(n for n, _ in _patched_names(ast.parse(code))) == [
        "os.urandom", "socket.socket", "ssl.SSLContext.sslsocket_class"]


def test_public_functions_win_over_subpackages() -> None:
    """``tracesock.trace`` and ``tracesock.replay`` are the functions, also after every
    module of the package was imported."""
    import importlib

    import tracesock

    for name in modules():
        if "_bootstrap" not in name and not name.endswith("__main__"):
            importlib.import_module(name)
    assert callable(tracesock.trace) and tracesock.trace.__name__ == "trace"
    assert callable(tracesock.replay) and tracesock.replay.__name__ == "replay"
