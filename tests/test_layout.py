"""The layout the architecture promises (README "Architecture"), checked so it stays true."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("server", "storage", "domain")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_driver_import_outside_storage() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("server", "domain")
        for path in _modules(package)
        if _imports(path) & {"psycopg", "psycopg_pool"}
    ]
    assert offenders == []


def test_domain_imports_neither_transport_nor_storage() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in _modules("domain")
        if _imports(path) & {"grpc", "server", "storage", "platform_admin"}
    ]
    assert offenders == []


def test_no_module_name_is_used_three_times_across_the_layers() -> None:
    names = Counter(
        path.name for layer in LAYERS for path in _modules(layer) if path.name != "__init__.py"
    )
    assert [name for name, count in names.items() if count >= 3] == []


def test_server_top_level_stays_small() -> None:
    top = [p.name for p in (ROOT / "server").glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= 12, top
