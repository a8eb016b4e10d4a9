"""base_model stage: write the base model named by `model.base` to models/base/ (diffusers folder);
`tiny` is pretrained here on synthetic data of its own seed (a few minutes on 2 CPU cores)."""

import logging

from fashion_lora import paths
from fashion_lora.devices import configure_torch
from fashion_lora.disk import ensure_space
from fashion_lora.files import atomic_dir, write_json
from fashion_lora.params import load_params
from fashion_lora.pretrain import provision_tiny
from fashion_lora.provision import provision_base
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.base_model")


def main() -> None:
    params = load_params()
    configure_torch(params, "base_model")
    ensure_space(params, "models/base")
    with atomic_dir(paths.BASE) as tmp:
        if params.model.base == "tiny":
            info = provision_tiny(params.seed, tmp, params.model.pretrain, params.precompute)
        else:
            info = provision_base(params.model.base, params.seed, tmp)
    write_json(paths.BASE_REPORT, info)
    log.info("models/base ready: %s", info)


if __name__ == "__main__":
    run_stage(main)
