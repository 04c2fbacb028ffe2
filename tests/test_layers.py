"""The code's layers, read from its imports (every import, those inside functions too): each layer
imports only those below it, so a change to one never has to reason about the ones above.

    rapport.{settings,logs,metrics,priority,coalesce}   the floor: imports nothing of ours
    storage, models                                     the floor only (and neither the other)
    pipelines                                           storage and models
    cluster                                             pipelines (cluster/stack.py assembles a process)
    deployments                                         cluster
    rapport.cli                                         the roof: anything, and nothing imports it
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOOR = {
    "rapport",
    "rapport.settings",
    "rapport.logs",
    "rapport.metrics",
    "rapport.priority",
    "rapport.coalesce",
}
LAYERS = ["storage", "models", "pipelines", "cluster", "deployments"]
# What each layer may import besides the floor and itself.
ALLOWED = {
    "storage": set(),
    "models": set(),
    "pipelines": {"storage", "models"},
    "cluster": {"storage", "models", "pipelines"},
    "deployments": {"storage", "models", "pipelines", "cluster"},
}
ROOF = "rapport.cli"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _ours(name: str) -> str | None:
    top = name.split(".")[0]
    if top == "rapport":
        return name if name in FLOOR or name == ROOF else "rapport"
    return top if top in LAYERS else None


def _submodule(package: str, name: str) -> str:
    """package.name if that is a module of ours, else package (the name is something in it)."""
    path = ROOT.joinpath(*package.split("."), name)
    return f"{package}.{name}" if path.with_suffix(".py").exists() or path.is_dir() else package


def imports() -> dict[str, set[str]]:
    """Each module of ours -> the layers (or floor/roof modules) it imports."""
    found: dict[str, set[str]] = {}
    for top in [*LAYERS, "rapport"]:
        for path in (ROOT / top).rglob("*.py"):
            targets: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    # `from rapport import metrics` imports the module rapport.metrics
                    names = [_submodule(node.module, alias.name) for alias in node.names]
                for name in names:
                    if (target := _ours(name)) is not None:
                        targets.add(target)
            found[_module(path)] = targets
    return found


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, targets in sorted(imports().items()):
        top = module.split(".")[0]
        if module == ROOF:
            continue
        allowed = FLOOR if top == "rapport" else FLOOR | ALLOWED[top] | {top}
        if bad := targets - allowed:
            wrong.append(f"{module} imports {sorted(bad)}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_floor_imports_nothing_of_ours_and_nothing_imports_the_cli() -> None:
    found = imports()
    assert set(found) >= FLOOR | {ROOF}, "a module of the floor or the roof moved: update this test"
    for module in FLOOR:
        assert not found[module], f"the floor's {module} imports {sorted(found[module])}"
    importers = sorted(m for m, targets in found.items() if ROOF in targets and m != ROOF)
    assert not importers, f"{importers} import the CLI"


# Outside storage/, SQLAlchemy is named only for a connection's type, its errors and a URL's parts: the
# SQL itself (select, text, insert ...) is storage's.
SQLALCHEMY_OUTSIDE_STORAGE = {"sqlalchemy.ext.asyncio", "sqlalchemy.exc", "sqlalchemy.engine"}


def test_sql_is_written_only_in_storage() -> None:
    wrong = []
    for top in [*LAYERS, "rapport"]:
        if top == "storage":
            continue
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [_submodule_of_sqlalchemy(node.module, alias.name) for alias in node.names]
                else:
                    continue
                for name in names:
                    if name.split(".")[0] == "sqlalchemy" and name not in SQLALCHEMY_OUTSIDE_STORAGE:
                        wrong.append(f"{_module(path)} imports {name}")
    assert not wrong, "SQL outside storage/:\n" + "\n".join(sorted(wrong))


def _submodule_of_sqlalchemy(module: str, name: str) -> str:
    """`from sqlalchemy import exc` names sqlalchemy.exc; `from sqlalchemy import select`, sqlalchemy."""
    return f"{module}.{name}" if f"{module}.{name}" in SQLALCHEMY_OUTSIDE_STORAGE else module


def test_the_api_reaches_what_is_stored_through_one_door() -> None:
    """deployments/api opens no transaction and holds no Database: its routes call ``Memory`` (``run``
    for a storage function, a method for what the index or a model must follow)."""
    wrong = []
    for path in (ROOT / "deployments" / "api").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"transaction", "autocommit", "connect"}:
                wrong.append(f"{_module(path)}:{node.lineno} calls .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "storage.db":
                wrong.append(f"{_module(path)}:{node.lineno} imports storage.db")
    assert not wrong, "the API around Memory:\n" + "\n".join(sorted(wrong))
