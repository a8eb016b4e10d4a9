"""Checks that run before any stage deletes its outputs.

DVC removes a stage's outs right before running its command, so a bad value found inside the
stage would cost the user the last good outputs. The `check` stage runs first: it loads
params.yaml (types and limits) and checks that every input path it names exists. Its output
is the same text whenever the params are valid, so it never makes a later stage rerun.
"""

from __future__ import annotations

from pathlib import Path

from .params import Params
from .utils import UserError

CHECK_TEXT = "params.yaml and the input paths it names are valid (written by the check stage)\n"


def _looks_local(base: str) -> bool:
    return base.startswith(("/", ".", "~")) or base.count("/") != 1 or Path(base).expanduser().exists()


def check_inputs(params: Params) -> None:
    """Every file or folder a param names must exist: the local data, a local base model, a CLIP folder."""
    if params.data.source == "local":
        for key, value in (("data.local.images", params.data.local.images),
                           ("data.local.captions", params.data.local.captions)):
            if not Path(str(value)).expanduser().exists():
                raise UserError(f"{key}: {value} does not exist; point it at your images folder/zip and "
                                "captions JSON (or set data.source: synthetic)")
    base = params.model.base
    folder = Path(base).expanduser()
    if base not in ("tiny", "tiny-random") and _looks_local(base):
        if not folder.exists():
            raise UserError(f"model.base: {base!r} is neither 'tiny', 'tiny-random', an existing folder, nor a hub "
                            "id like 'stable-diffusion-v1-5/stable-diffusion-v1-5'")
        if not (folder / "model_index.json").is_file():
            raise UserError(f"model.base: {base} is not a diffusers folder (no model_index.json); save one with "
                            "StableDiffusionPipeline.save_pretrained")
    clip = params.evaluate.clip_model
    if clip and not (Path(clip).expanduser() / "config.json").is_file():
        raise UserError(f"evaluate.clip_model: {clip} is not a local CLIP model folder (no config.json); "
                        "set it to null to skip the CLIP score")
