"""The package's layout: no import circle, methods reached only through the registry."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recbole_bet"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict) -> set:
    """Package modules a file imports, at any level (a lazy import inside a function counts too)."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from a.b import c" imports a.b.c when that is a module, else a name of a.b
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # "import a.b.c" of a name: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict:
    modules = package_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def find_cycle(graph: dict):
    """One import circle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_and_lazy_imports_are_seen(tmp_path):
    graph = import_graph()
    assert "recbole_bet.trainer" in graph["recbole_bet"]  # the lazy BETTrainer attribute
    assert "recbole_bet.methods.bet.method" in graph["recbole_bet.methods.bet"]


def test_the_package_has_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


METHOD_SHARED = {"recbole_bet.methods", "recbole_bet.methods.base"}


def is_method_module(name: str) -> bool:
    return name.startswith("recbole_bet.methods.") and name not in METHOD_SHARED


def family(name: str) -> str:
    return ".".join(name.split(".")[:3])  # recbole_bet.methods.<family>


def test_method_modules_are_reached_only_through_the_registry():
    graph = import_graph()
    for module, targets in graph.items():
        for target in targets:
            if is_method_module(target):
                assert is_method_module(module) and family(module) == family(target), (
                    f"{module} imports the method module {target}: use recbole_bet.methods.get_method")
    for module, targets in graph.items():
        if is_method_module(module):
            assert "recbole_bet.methods" not in targets, f"{module} imports the registry; import methods.base"
    assert graph["recbole_bet.methods"] == set(), "the registry imports its methods by name, when asked"


def test_registry_names_every_method_once():
    from recbole_bet.methods import METHODS, get_method, get_method_class
    from recbole_bet.methods.base import Method

    for name in METHODS:
        cls = get_method_class(name)
        assert issubclass(cls, Method) and cls.name == name
        assert isinstance(get_method(name), cls)
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        get_method_class("nope")


def test_readme_and_docs_links_point_at_files():
    import re

    root = PACKAGE.parent
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(root)} links to missing {target}"
