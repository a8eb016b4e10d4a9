"""Static checks of dvc.yaml against the code: missing deps or params are bugs."""

import ast
import re
from pathlib import Path

import yaml

from tests.helpers import REPO

SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _local_imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module is None and node.level == 1
                                                 or node.module == "fashion_lora"):
            mods.update(a.name for a in node.names)  # from . import x / from fashion_lora import x
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("fashion_lora."):
                mods.add(node.module.split(".")[1])
            elif node.level == 1:
                mods.add(node.module)
    return mods


def _closure(stage: str) -> set[str]:
    todo, seen = [REPO / f"stages/{stage}.py"], set()
    while todo:
        for m in _local_imports(todo.pop()):
            if m not in seen:
                seen.add(m)
                todo.append(REPO / f"fashion_lora/{m}.py")
    return {f"fashion_lora/{m}.py" for m in seen}


def test_every_imported_module_is_a_dep():
    for name, stage in SPEC.items():
        deps = set(stage["deps"])
        assert f"stages/{name}.py" in deps
        missing = _closure(name) - deps
        assert not missing, f"stage {name} imports {missing} but does not list them as deps"


def test_no_stale_code_deps():
    for name, stage in SPEC.items():
        code = {d for d in stage["deps"] if d.startswith("fashion_lora/")}
        extra = code - _closure(name)
        assert not extra, f"stage {name} lists {extra} as deps but never imports them"


def test_params_read_are_declared():
    """`params.<section>` / `params.seed` used in a stage must be in its params list."""
    for name, stage in SPEC.items():
        text = (REPO / f"stages/{name}.py").read_text()
        declared = [str(p) for p in stage.get("params", [])]
        used = set(re.findall(r"params\.(seed|data|model|filter|precompute|train|evaluate|generate)\b", text))
        for u in used:
            assert any(d == u or d.startswith(u + ".") for d in declared), f"{name} reads params.{u}"


def test_offline_plots_template_is_pinned_and_self_contained():
    import json

    cfg = (REPO / ".dvc/config").read_text()
    assert "html_template = plots/offline.html" in cfg
    page = (REPO / ".dvc/plots/offline.html").read_text()
    pins = json.loads((REPO / "tools/plots/package.json").read_text())["dependencies"]
    for name, version in pins.items():
        assert f"<!-- {name} {version} -->" in page, name
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC's CDN tags are never inserted
    assert "<script src" not in page


def _declared(stage: dict) -> list[str]:
    return [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"] + stage.get("outs", [])]


def test_every_pipeline_file_a_stage_names_is_a_dep_or_out():
    """A stage that reads `reports/...` (or data/, models/) without declaring it would not rerun
    when that file changes. Stages name their files through `fashion_lora.paths`."""
    from fashion_lora import paths

    for name, stage in SPEC.items():
        tree = ast.parse((REPO / f"stages/{name}.py").read_text())
        named = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        named |= {str(getattr(paths, n.attr)) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                  and isinstance(n.value, ast.Name) and n.value.id == "paths"}
        files = {p for p in named if re.fullmatch(r"(data|models|reports)/[\w./-]+", p)}
        files -= {str(p) for p in paths.NOT_DVC_OUTS}
        declared = _declared(stage)
        for path in files:
            assert any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared), (name, path)


def test_dvc_yaml_outs_are_the_paths_module():
    """Every out in dvc.yaml is a path of `fashion_lora.paths`, and every stage uses its own outs
    through that module: the layout is written in one place."""
    from fashion_lora import paths

    known = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    for name, stage in SPEC.items():
        text = (REPO / f"stages/{name}.py").read_text()
        for out in stage.get("outs", []):
            out = out if isinstance(out, str) else next(iter(out))
            assert out in known, f"{name}: out {out} is not in fashion_lora/paths.py"
        used = {str(getattr(paths, a)) for a in re.findall(r"paths\.([A-Z_]+)", text)}
        assert used, f"stage {name} names no path through fashion_lora.paths"
