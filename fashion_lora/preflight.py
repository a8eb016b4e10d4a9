"""Checks that run before any stage deletes its outputs.

DVC removes a stage's outs right before running its command, so a bad value found inside the
stage would cost the user the last good outputs. The `check` stage runs first: it loads
params.yaml (types and limits) and checks that every input path it names exists. Its output
is the same text whenever the params are valid, so it never makes a later stage rerun.
"""

from __future__ import annotations

from pathlib import Path

from .base_id import classify_base
from .errors import UserError
from .params import Params

CHECK_TEXT = "params.yaml and the input paths it names are valid (written by the check stage)\n"


def check_inputs(params: Params) -> None:
    """Every file or folder a param names must exist: the local data, a local base model, a CLIP folder."""
    if params.data.source == "local":
        for key, value in (("data.local.images", params.data.local.images),
                           ("data.local.captions", params.data.local.captions)):
            if not Path(str(value)).expanduser().exists():
                raise UserError(f"{key}: {value} does not exist; point it at your images folder/zip and "
                                "captions JSON (or set data.source: synthetic)")
    classify_base(params.model.base)  # a bad id or a folder without model_index.json stops here
    clip = params.evaluate.clip_model
    if clip and not (Path(clip).expanduser() / "config.json").is_file():
        raise UserError(f"evaluate.clip_model: {clip} is not a local CLIP model folder (no config.json); "
                        "set it to null to skip the CLIP score")
