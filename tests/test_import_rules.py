"""The rooms keep their walls: which of our packages may import which.

    seriesflow            the shared floor: the contract (v1), settings, logs
    seriesflow.receiver   the DICOM side;  imports the floor only
    seriesflow.store      the database side; imports the floor only
    seriesflow.migrations the schema history; imports the floor only
    seriesflow.cli        the `seriesflow` command: wires all of the above
                          (seriesflow/__main__.py, `python -m seriesflow`, calls it)

The receiver and the store meet only through the generated contract (seriesflow.v1); the
contract imports nothing of ours but itself. The imports of every product module are read
from its source (ast), so an import inside a function counts as much as one at the top.
Nothing anywhere (product, tests, benchmarks, scripts) imports the bare folder names
`receiver`, `store` or `migrations`: they are reached only as seriesflow.*.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The folders that are packages under seriesflow (seriesflow/<name> links to them).
SERVICE_FOLDERS = ("receiver", "store", "migrations")
FLOOR = "seriesflow"

SERVICES = frozenset({"seriesflow.receiver", "seriesflow.store", "seriesflow.migrations"})
# room -> the rooms it may import, besides itself and the floor.
ALLOWED: dict[str, frozenset[str]] = {
    "seriesflow.receiver": frozenset(),
    "seriesflow.store": frozenset(),
    "seriesflow.migrations": frozenset(),
    "seriesflow.cli": SERVICES,
    "seriesflow.__main__": SERVICES | {"seriesflow.cli"},  # `python -m seriesflow`
    "seriesflow.v1": frozenset(),
    FLOOR: frozenset(),
}
ROOMS = tuple(sorted(ALLOWED, key=len, reverse=True))


def room_of(module: str) -> str | None:
    """The room a dotted module name belongs to, or None when it is not ours."""
    for room in ROOMS:
        if module == room or module.startswith(room + "."):
            return room
    return None


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in `source`, relative ones resolved."""
    found = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from seriesflow import store` imports the room seriesflow.store.
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """What `module` (whose text is `source`) imports that its room may not."""
    own = room_of(module)
    assert own is not None, f"{module} is not in any room"
    problems = []
    for line, target in imported_modules(source, module, is_package):
        if target.split(".")[0] in SERVICE_FOLDERS:
            problems.append(f"{module}:{line} imports {target}: use seriesflow.{target}")
            continue
        room = room_of(target)
        if room is None or room == own:
            continue
        if own == "seriesflow.v1":
            problems.append(f"{module}:{line}: the contract imports {target}")
        elif room not in (FLOOR, "seriesflow.v1") and room not in ALLOWED[own]:
            problems.append(f"{module}:{line}: {own} may not import {target}")
    return problems


def product_modules() -> list[tuple[str, Path, bool]]:
    """(dotted name, path, is_package) of every product module, as the wheel installs it."""
    modules = []
    paths = [
        Path(folder, name)
        # followlinks: seriesflow/store etc. are symlinks, which Path.rglob does not follow.
        for folder, _, names in os.walk(ROOT / "seriesflow", followlinks=True)
        for name in names
        if name.endswith(".py")
    ]
    for path in sorted(paths):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules.append((name, path, is_package))
    return modules


def test_every_service_folder_is_reached_through_seriesflow() -> None:
    for folder in SERVICE_FOLDERS:
        link = ROOT / "seriesflow" / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), link


def test_the_product_modules_include_every_room() -> None:
    rooms = {room_of(name) for name, _, _ in product_modules()}
    assert rooms == set(ALLOWED)


@pytest.mark.parametrize(
    ("name", "path", "is_package"),
    product_modules(),
    ids=[name for name, _, _ in product_modules()],
)
def test_product_module_imports_only_what_its_room_may(
    name: str, path: Path, is_package: bool
) -> None:
    assert violations(path.read_text(), name, is_package) == []


def test_nothing_imports_the_bare_folder_names() -> None:
    offenders = []
    for folder in ("tests", "bench", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, target in imported_modules(path.read_text(), "tests.x", False):
                if target.split(".")[0] in SERVICE_FOLDERS:
                    offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert offenders == []


# The rule itself, on modules written for the purpose: each forbidden edge is caught.
@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("seriesflow.receiver.intake", "from seriesflow.store import ingest\n"),
        ("seriesflow.receiver.intake", "def f():\n    import seriesflow.store.database\n"),
        ("seriesflow.receiver.intake", "from seriesflow import store\n"),
        ("seriesflow.store.ingest", "from seriesflow.receiver.tracker import Tracker\n"),
        ("seriesflow.store.server", "from seriesflow import migrations\n"),
        ("seriesflow.migrations", "from seriesflow.store.database import libpq_url\n"),
        ("seriesflow.settings", "from seriesflow.store.config import StoreConfig\n"),
        ("seriesflow.logs", "from seriesflow.cli import main\n"),
        ("seriesflow.v1.series_store_pb2", "from seriesflow import settings\n"),
        ("seriesflow.store.ingest", "from ..receiver import header\n"),
        ("seriesflow.store.ingest", "import store.errors\n"),
        ("seriesflow.cli.run", "from receiver import app\n"),
    ],
)
def test_a_forbidden_import_is_reported(module: str, source: str) -> None:
    assert violations(source, module) != []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("seriesflow.receiver.intake", "from seriesflow.v1 import series_store_pb2 as pb\n"),
        ("seriesflow.receiver.intake", "from seriesflow import logs, settings\n"),
        ("seriesflow.receiver.intake", "from . import spool\nfrom .tracker import Tracker\n"),
        ("seriesflow.store.server", "from seriesflow.store.schema import require_head\n"),
        (
            "seriesflow.cli.run",
            "from seriesflow.store import database\nimport seriesflow.receiver\n",
        ),
        ("seriesflow.v1.series_store_pb2_grpc", "from seriesflow.v1 import series_store_pb2\n"),
    ],
)
def test_an_allowed_import_is_not_reported(module: str, source: str) -> None:
    assert violations(source, module) == []
