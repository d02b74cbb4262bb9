"""The import graph of the code: entry points (HTTP, Celery, CLI, the embedded runner) above
the domains, and no cycle, deferred imports inside functions included; the settings are read
by entry points only and handed down."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("workers", "services.api", "services.cli")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted([*ROOT.glob("services/**/*.py"), *ROOT.glob("workers/**/*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules that ``name`` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*kept, base] if base else kept)
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)
    modules = set()
    for imported in named:
        module = imported
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module and module != name:
            modules.add(module)
    return modules


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imported(name, path, known) for name, path in known.items()}


def _is_entry_point(module: str) -> bool:
    return any(module == entry or module.startswith(f"{entry}.") for entry in ENTRY_POINTS)


def test_no_module_imports_itself_back() -> None:
    graphlib.TopologicalSorter(_graph()).prepare()  # raises CycleError, naming the cycle


def test_domains_import_no_entry_point() -> None:
    upward = {
        module: sorted(filter(_is_entry_point, imported))
        for module, imported in _graph().items()
        if not _is_entry_point(module)
    }
    assert {module: names for module, names in upward.items() if names} == {}


def test_only_entry_points_read_the_settings() -> None:
    """The domains get their settings (or what was built from them: the runtime, the opened
    database) from the entry point that read them."""
    readers = {
        name
        for name, path in _modules().items()
        if not _is_entry_point(name)
        and name != "services.settings"
        and any(
            isinstance(node, ast.Name | ast.Attribute)
            and (node.id if isinstance(node, ast.Name) else node.attr) == "get_settings"
            for node in ast.walk(ast.parse(path.read_text()))
        )
    }
    assert readers == set()


def test_the_graph_sees_deferred_imports() -> None:
    """A guard on the test itself: an import inside a function counts."""
    assert "services.api.http_protocol" in _graph()["services.cli.server_roles"]
