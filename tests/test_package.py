"""Static checks of the package's structure."""

import graphlib

from fashion_lora import code_deps
from tests.helpers import REPO


def test_the_package_has_no_import_cycle():
    """Every import counts, `TYPE_CHECKING` and function-level ones too: a cycle among
    annotations is one a refactor turns into a real one."""
    graph = {}
    for path in sorted((REPO / "fashion_lora").rglob("*.py")):
        name = code_deps._module_name(path)
        graph[name] = code_deps.imports(path) - {name}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None
