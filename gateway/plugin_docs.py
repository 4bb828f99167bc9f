"""A plugin's docstrings read from its source, without importing it.

The admin UI's plugin chooser describes every installed plugin. Importing them all to read
``__doc__`` would load every platform's and model vendor's SDK into the daemon for the rest of
its life (issue #9: ~8 MiB with the built-in plugins, more with third-party ones) for one page.
Instead the entry point's module is found without importing it or its parent packages (the
top-level name through the import system's finders, the rest with
:class:`importlib.machinery.PathFinder` in the parent's folders) and parsed with
:mod:`ast`: the class is followed through ``from X import Name`` re-exports, and its ``Config``
through a nested class or a ``Config = Name`` assignment.

Anything this cannot follow (a compiled module, a class built at run time) gives ``None``; the
caller then shows the plugin without a description, or the class's own docstrings once loaded.
"""

from __future__ import annotations

import ast
import functools
import importlib.machinery
import importlib.metadata
import importlib.util
from pathlib import Path

MAX_HOPS = 8
"""Re-exports followed before giving up (a cycle, or a very deep package)."""


@functools.lru_cache(maxsize=256)
def _spec(module: str) -> importlib.machinery.ModuleSpec | None:
    """Where ``module`` is, its parent packages not imported."""
    parts = module.split(".")
    # A top-level name is looked up by every finder (an editable install has its own) and
    # imports nothing; below it, the parent's folders are searched directly.
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):  # ValueError: in sys.modules without a __spec__
        return None
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        path = list(spec.submodule_search_locations)
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), path)
    return spec


@functools.lru_cache(maxsize=256)
def _module_tree(module: str) -> ast.Module | None:
    spec = _spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` inside ``module`` names."""
    if not node.level:
        return node.module or ""
    spec = _spec(module)
    package = bool(spec and spec.submodule_search_locations)
    base = module.split(".")
    drop = node.level - 1 if package else node.level
    base = base[: len(base) - drop] if drop else base
    return ".".join([*base, *([node.module] if node.module else [])])


def _find_class(module: str, name: str, hops: int = 0) -> tuple[str, ast.ClassDef] | None:
    """The class ``name`` as defined in ``module`` or where ``module`` imports it from."""
    tree = _module_tree(module)
    if tree is None or hops > MAX_HOPS:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = _absolute(module, node)
                    return _find_class(source, alias.name, hops + 1)
    return None


def _config_class(module: str, cls: ast.ClassDef) -> ast.ClassDef | None:
    for node in cls.body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            return node
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "Config" for t in node.targets)
            and isinstance(node.value, ast.Name)
        ):
            found = _find_class(module, node.value.id)
            return found[1] if found else None
    return None


def docstrings(entry_point: importlib.metadata.EntryPoint) -> tuple[str, str] | None:
    """The docstrings of the plugin class and of its ``Config`` ('' where there is none), or
    None when the source cannot be followed."""
    module, _, attr = entry_point.value.partition(":")
    if not attr or "." in attr:
        return None
    found = _find_class(module.strip(), attr.strip())
    if found is None:
        return None
    where, cls = found
    config = _config_class(where, cls)
    return ast.get_docstring(cls) or "", (ast.get_docstring(config) or "") if config else ""
