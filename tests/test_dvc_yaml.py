"""Static checks of dvc.yaml against the code: missing deps or params are bugs."""

import ast
import re
from pathlib import Path

import yaml

from fashion_lora import code_deps
from tests.helpers import REPO

SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _closure(stage: str) -> set[str]:
    return {str(p) for p in code_deps.closure(REPO / f"stages/{stage}.py")}


def _code_deps(stage: dict) -> set[str]:
    """The stage's package deps as files: a folder dep stands for every module in it."""
    files = set()
    for dep in stage["deps"]:
        if dep.startswith("fashion_lora/"):
            path = REPO / dep
            files |= ({str(f.relative_to(REPO)) for f in path.rglob("*.py")} if path.is_dir() else {dep})
    return files


def test_every_imported_module_is_a_dep():
    for name, stage in SPEC.items():
        assert f"stages/{name}.py" in stage["deps"]
        missing = _closure(name) - _code_deps(stage)
        assert not missing, f"stage {name} imports {missing} but does not list them as deps"


def test_no_stale_code_deps():
    """A dep on a module the stage never imports reruns it for nothing (the rerun unit is wrong)."""
    for name, stage in SPEC.items():
        extra = _code_deps(stage) - _closure(name)
        assert not extra, f"stage {name} lists {extra} as deps but never imports them"


def test_closure_follows_relative_imports_into_package_folders(tmp_path):
    """The closure sees `from ..x import y` inside fashion_lora/training/ and function-level
    imports, and the train stage's fingerprint hashes exactly its dvc.yaml code deps."""
    from fashion_lora.training.checkpoint import train_code

    assert {"fashion_lora/training/loop.py", "fashion_lora/training/__init__.py", "fashion_lora/val_loss.py",
            "fashion_lora/diffusion.py"} <= _closure("train")
    assert "fashion_lora/inference.py" in _closure("generate")
    assert "fashion_lora/export.py" in {str(p) for p in code_deps.closure(REPO / "fashion_lora/cli.py")}  # lazy
    assert {str(p) for p in train_code()} == {"stages/train.py"} | _code_deps(SPEC["train"])


def test_train_only_modules_are_not_deps_of_the_expensive_stages():
    """base_model (minutes of pretraining) and precompute never rerun for an edit to training,
    validation, inference or the SD1.5 builders."""
    for name in ("base_model", "precompute"):
        deps = _code_deps(SPEC[name])
        for module in ("training/loop.py", "val_loss.py", "inference.py", "sd15.py", "lora.py"):
            assert f"fashion_lora/{module}" not in deps, (name, module)


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


def test_the_resolved_token_window_reruns_what_uses_it():
    """`train.max_token_length: auto` is resolved from filter's record (no timings in it, unlike
    filter.json): train depends on it; evaluate and generate read the window from the adapter."""
    from fashion_lora import paths

    assert str(paths.CAPTION_TOKENS) in _declared(SPEC["filter"]) and str(paths.TOKENIZER) in SPEC["filter"]["deps"]
    assert str(paths.CAPTION_TOKENS) in SPEC["train"]["deps"]
    for name in ("evaluate", "generate"):
        assert str(paths.LORA) in SPEC[name]["deps"] and "train.max_token_length" not in SPEC[name]["params"]
