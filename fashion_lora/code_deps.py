"""Which of the package's modules a script runs, read from the source (nothing is imported).

Under DVC a module is a rerun unit: a stage's code deps in dvc.yaml must be exactly the modules
its script imports, directly or not (tests/test_dvc_yaml.py checks it), and the train stage's
checkpoint fingerprint hashes the same files, so the two cannot drift apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "fashion_lora"


def module_file(name: str) -> Path | None:
    """The file of module `name` (`fashion_lora.x` or `fashion_lora.x.y`), None if it is none."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    parts = list(path.resolve().relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(path: Path) -> set[str]:
    """The package's modules that `path` imports anywhere in its code (function-level imports
    included: they run too), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = _package_of(path).split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                source = f"{parent}.{node.module}" if node.module else parent
            else:
                source = node.module or ""
            found.add(source)
            # `from pkg import name`: name may be a submodule of pkg
            found.update(f"{source}.{a.name}" for a in node.names if module_file(f"{source}.{a.name}"))
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m)}


def closure(script: Path) -> list[Path]:
    """Every package file that running `script` executes: its imports, theirs, and so on, plus
    each subpackage's `__init__.py` (the top-level one only holds the version). Sorted, relative
    to the repository root."""
    todo, seen = [Path(script)], set()
    while todo:
        for name in imports(todo.pop()):
            parts = name.split(".")
            for k in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ first
                module = ".".join(parts[:k])
                if module not in seen:
                    seen.add(module)
                    todo.append(module_file(module))
    return sorted(module_file(m).relative_to(ROOT) for m in seen)
