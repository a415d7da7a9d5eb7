"""The house's rules, read from the source: imports between engines/'s rooms run one way, nothing but the
bench command uses the bench room, and the rest of the project imports a room's public names from the room."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each room may import the rooms listed for it (and itself); ARCHITECTURE.md draws the same arrows.
ALLOWED = {
    "runtime": set(),
    "faces": {"runtime"},
    "swap": {"runtime", "faces"},
    "deepfake": {"runtime", "faces", "swap"},
    "bench": {"runtime", "faces", "swap", "deepfake"},
}
ROOMS = tuple(ALLOWED)
# Outside engines/bench, only the bench command and tests may use the bench room.
BENCH_USERS = {Path("swapwatch/commands/bench.py")}
SOURCE_FOLDERS = ("engines", "export", "stream", "client", "swapwatch", "bench")


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def engine_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import of swapwatch.engines.* in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("swapwatch.engines"):
            found.append((node.lineno, node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.startswith("swapwatch.engines")]
    return found


def room_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[2] in ROOMS else None


def test_every_engines_module_lives_in_a_room():
    loose = [p.name for p in (REPO / "engines").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside a room: {loose}"
    assert {p.name for p in (REPO / "engines").iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        *ROOMS, "weights"}


def test_imports_between_rooms_run_one_way():
    wrong = []
    for path in python_files("engines"):
        rel = path.relative_to(REPO)
        here = rel.parts[1] if len(rel.parts) > 2 else None
        for line, module, _ in engine_imports(path):
            there = room_of(module)
            if here and there and there != here and there not in ALLOWED[here]:
                wrong.append(f"{rel}:{line} ({here}) imports {module}")
    assert wrong == [], "\n".join(wrong)


def test_nothing_but_the_bench_command_uses_the_bench_room():
    users = [f"{p.relative_to(REPO)}:{line}" for p in python_files(*SOURCE_FOLDERS)
             for line, module, _ in engine_imports(p)
             if room_of(module) == "bench" and p.relative_to(REPO).parts[:2] != ("engines", "bench")
             and p.relative_to(REPO) not in BENCH_USERS]
    assert users == [], users


def test_outside_a_room_public_names_come_from_the_room():
    """``from swapwatch.engines.faces import YuNetDetector``, not ``...faces.yunet import``, wherever the room
    exports the name (private helpers and module objects may still be imported from their module)."""
    deep = []
    for path in python_files(*SOURCE_FOLDERS, "tests"):
        rel = path.relative_to(REPO)
        here = rel.parts[1] if rel.parts[0] == "engines" and len(rel.parts) > 2 else None
        for line, module, names in engine_imports(path):
            room = room_of(module)
            if room is None or room == here or module.count(".") != 3:
                continue
            exported = set(dir(importlib.import_module(f"swapwatch.engines.{room}")))
            if names and all(n in exported for n in names):
                deep.append(f"{rel}:{line} from {module} import {', '.join(names)}")
    assert deep == [], "\n".join(deep)


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_holds_and_its_exports_resolve(room):
    package = importlib.import_module(f"swapwatch.engines.{room}")
    assert package.__doc__ and len(package.__doc__.splitlines()) >= 3
    for name in dir(package):
        assert getattr(package, name) is not None, name  # every exported name imports from its module
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018
