"""What `model.base` names, decided in one place for the check stage and the base_model stage.
Imports nothing heavy, so the check stage stays quick."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

LEGACY_IDS = {"runwayml/stable-diffusion-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5"}


def classify_base(base: str) -> str:
    """What `model.base` names: 'tiny', 'tiny-random', 'local' (an existing diffusers folder) or
    'hub' (an id like owner/name). Anything else is a UserError naming the key and the fix; the
    check stage and the base_model stage both ask here."""
    if base in ("tiny", "tiny-random"):
        return base
    folder = Path(base).expanduser()
    if folder.exists():
        if not (folder / "model_index.json").is_file():
            raise UserError(f"model.base: {folder} is not a diffusers folder (no model_index.json); "
                            "save one with StableDiffusionPipeline.save_pretrained")
        return "local"
    if base.startswith(("/", ".", "~")) or base.count("/") != 1:
        raise UserError(f"model.base: {base!r} is neither 'tiny', 'tiny-random', an existing folder, nor a hub id "
                        "like 'stable-diffusion-v1-5/stable-diffusion-v1-5'")
    return "hub"
