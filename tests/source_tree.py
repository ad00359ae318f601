"""The package's source files by module name, for the tests that read the code itself (AST checks).

The distribution maps ``agents/``, ``tables/`` and ``bridges/`` into ``vsync_stream`` (pyproject
``package-dir``); generated gRPC code is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {
    "vsync_stream": ROOT / "vsync_stream",
    "vsync_stream.agents": ROOT / "agents",
    "vsync_stream.tables": ROOT / "tables",
    "vsync_stream.bridges": ROOT / "bridges",
}
GENERATED = ROOT / "bridges" / "generated"


def package_modules() -> dict[str, Path]:
    """Module name (``vsync_stream.tables.restore``) → source file, generated code excluded."""
    modules: dict[str, Path] = {}
    for package, directory in PACKAGE_DIRS.items():
        for path in sorted(directory.rglob("*.py")):
            if GENERATED in path.parents:
                continue
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def is_type_checking_block(node: ast.AST) -> bool:
    """True for ``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:``."""
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` in ``module`` (at ``path``) reads from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))
