"""The house's rules, checked by walking every import (ARCHITECTURE.md is the map).

- Rooms and floors: `churnsense.errors` / `churnsense.files` at the bottom, then `features`, then `models` and
  `store` side by side, then
  `training`, `serving`, `batch` and `monitoring` side by side, and the command line (`churnsense.cli`, `churnsense.cli_models`, `churnsense.demo`) on
  top. A module imports only from its own room or a lower floor; the rooms of one floor never import
  each other (training code stays out of the Bento, batch code out of the service).
- No private name (`_name`) is imported from, or assigned into, another module.
- No import cycle between modules (imports at module level; imports inside functions are lazy on purpose).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("churnsense", "features", "models", "store", "training", "serving", "batch", "monitoring")
FLOOR = {
    "base": 0, "features": 1, "models": 2, "store": 2, "training": 3, "serving": 3, "batch": 3, "monitoring": 3,
    "cli": 4,
}  # fmt: skip


def _room(module: str) -> str:
    if module in ("churnsense.cli", "churnsense.cli_models", "churnsense.demo", "churnsense.__main__"):
        return "cli"
    if module.startswith("churnsense"):
        return "base"
    return module.split(".")[0]


def _modules() -> dict[str, Path]:
    found = {}
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int, bool]]:
    """(imported project module, imported name or "", line, at module level) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ROOMS:
                    out.append((alias.name, "", node.lineno, id(node) in top_level))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] not in ROOMS:
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                target = full if full in modules else node.module
                out.append(
                    (target, "" if full in modules else alias.name, node.lineno, id(node) in top_level)
                )
    return out


def test_imports_point_down_and_never_across_rooms_of_one_floor() -> None:
    modules = _modules()
    problems = []
    for name, path in modules.items():
        mine = _room(name)
        for target, _, line, _ in _imports(path, modules):
            theirs = _room(target)
            if theirs == mine:
                continue
            if FLOOR[theirs] >= FLOOR[mine]:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {name} ({mine}) imports {target} ({theirs})"
                )
    assert not problems, "\n".join(problems)


def test_no_private_names_cross_modules() -> None:
    modules = _modules()
    problems = []
    for name, path in modules.items():
        for target, imported, line, _ in _imports(path, modules):
            if target != name and imported.startswith("_") and not imported.startswith("__"):
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {imported} from {target}")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr.startswith("_")
                    and isinstance(target.value, ast.Attribute | ast.Name)
                    and ast.unparse(target.value) in modules
                ):
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: sets {ast.unparse(target)}")
    assert not problems, "\n".join(problems)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {
        name: {t for t, _, _, top in _imports(path, modules) if top and t in modules and t != name}
        for name, path in modules.items()
    }
    # A package's __init__ importing its own submodules is how packages re-export: not a cycle of rooms.
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_files_stay_small_enough_to_read() -> None:
    """About 500 lines a file at most; the few above carry their reason here."""
    allowed = {
        "features/simulate.py": "one job, the event simulator: its generators and text templates",
        "features/validate.py": "one job, validating a spec: one small check per rule a real file breaks",
        "training/churn.py": "evaluate, log, register, train and promote: the churn run's steps in order",
    }
    long = []
    for path in _modules().values():
        rel = str(path.relative_to(ROOT))
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > 520 and rel not in allowed:
            long.append(f"{rel}: {lines} lines")
    assert not long, "\n".join(long)
