"""No import cycles in ``fedpress``, between modules or between packages.

The graph is built from the source with ``ast`` (every ``import`` statement, including those
inside functions, since a lazy import is still a dependency; imports under
``if TYPE_CHECKING:`` are left out, they never run). A cycle is reported with its path, and
package-level cycles (``codec``, ``fl``, ``transport``, ``config``, ...) are reported as such.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import fedpress

ROOT = Path(fedpress.__file__).resolve().parent


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    skip.update(id(n) for n in ast.walk(child))
    return skip


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Modules of ``fedpress`` that the file at ``path`` imports."""
    name = module_name(path)
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from pkg import sub" imports the submodule when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # "fedpress.codec.base.X" -> "fedpress.codec.base"
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def build_graph() -> dict[str, set[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of nodes (first == last), or None; iterative DFS."""
    color: dict[str, int] = defaultdict(int)  # 0 new, 1 on stack, 2 done
    for start in sorted(graph):
        if color[start]:
            continue
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        path = [start]
        color[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = 2
                stack.pop()
                path.pop()
            elif color[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            elif color[nxt] == 0:
                color[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(sorted(graph.get(nxt, ())))))
    return None


def package_of(module: str) -> str:
    """``fedpress.codec.base`` -> ``codec``; top-level modules stand for themselves."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: dict[str, set[str]]) -> tuple[dict[str, set[str]], dict]:
    pkgs: dict[str, set[str]] = defaultdict(set)
    witness: dict[tuple[str, str], tuple[str, str]] = {}
    for mod, deps in graph.items():
        a = package_of(mod)
        if a == "fedpress":
            continue  # the package __init__ may import what it exports
        for dep in deps:
            b = package_of(dep)
            if b not in (a, "fedpress"):
                pkgs[a].add(b)
                witness.setdefault((a, b), (mod, dep))
    return pkgs, witness


def test_the_graph_sees_real_edges() -> None:
    graph = build_graph()
    assert "fedpress.codec.base" in graph["fedpress.codec.grad"]
    assert "fedpress.codec.routing" in graph["fedpress.codec.stream"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_level_cycles() -> None:
    cycle = find_cycle(build_graph())
    assert cycle is None, "import cycle between modules: " + " -> ".join(cycle)


def test_no_package_level_cycles() -> None:
    pkgs, witness = package_graph(build_graph())
    cycle = find_cycle(pkgs)
    if cycle is not None:
        edges = [f"{a} -> {b} (e.g. {witness[(a, b)][0]} imports {witness[(a, b)][1]})"
                 for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("import cycle between packages: " + "; ".join(edges))


def test_codec_depends_on_nothing_above_it() -> None:
    graph = build_graph()
    for mod, deps in graph.items():
        if package_of(mod) == "codec":
            above = {d for d in deps if package_of(d) not in ("codec", "fedpress")}
            assert not above, f"{mod} imports {sorted(above)}"
