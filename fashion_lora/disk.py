"""The disk a run of the current params needs, estimated before anything is written.

The check stage writes the estimate to reports/disk.json and refuses a run whose largest
figure does not fit in the free space of each filesystem it writes (the workspace and DVC's
cache); the writing stages check their own share again when they start, since free space
changes without any param changing. Sizes come from what the data and models occupy on disk,
measured where they cannot be computed (each constant says where it comes from).
"""

from __future__ import annotations

import configparser
import logging
import os
import zipfile
from pathlib import Path

from .errors import UserError, existing_parent, free_bytes, human_bytes
from .params import Params

log = logging.getLogger(__name__)

# Measured on the default (2026-12-02): data/raw held 33,504,122 B for 2,000 synthetic entries.
SYNTHETIC_ENTRY_BYTES = 16_752
# DeepFashion-MultiModal's images archive (issue 27: about 5.4 GB zipped, JPEGs barely compress).
DEEPFASHION_IMAGES_BYTES = 5_400_000_000
# A base model folder as save_pretrained writes it (fp32 safetensors): the tiny base measured on
# the default (23,615,694 B); SD1.5's UNet 3.44 GB + text encoder 0.49 GB + VAE 0.33 GB.
BASE_BYTES = {"tiny": 23_615_694, "tiny-random": 23_615_694, "hub": 4_270_000_000}
# LoRA parameters per unit of rank, by target module, counted on the real architectures
# (tests/test_disk.py recounts them): in + out features (convs: in x k x k + out).
LORA_PER_RANK = {
    "tiny": {"proj_in": 704, "to_q": 1408, "to_k": 1504, "to_v": 1504, "to_out.0": 1408, "proj_out": 704,
             "conv1": 8672, "conv2": 6080, "q_proj": 256, "k_proj": 256, "v_proj": 256, "out_proj": 256,
             "fc1": 384, "fc2": 384},
    "sd15": {"proj_in": 24960, "to_q": 49920, "to_k": 49728, "to_v": 49728, "to_out.0": 49920, "proj_out": 24960,
             "conv1": 288000, "conv2": 201600, "q_proj": 18432, "k_proj": 18432, "v_proj": 18432,
             "out_proj": 18432, "fc1": 46080, "fc2": 46080},
}
# Measured on the default: the latent index takes about 400 B per item beside the tensors, the
# CSV about 220 B per row; a checkpoint is 4.4x the LoRA's fp32 bytes (weights, best, two Adam
# moments) plus the curves; the reports and generated images about 1 MB.
INDEX_ITEM_BYTES, CSV_ROW_BYTES, REPORTS_BYTES = 400, 220, 1_000_000
CACHED = ("data/raw", "data/export", "data/fashion_data.csv", "data/latents", "models/base", "models/lora")
MARGIN = 1.2  # warn when less than 20% more than the estimate is free


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


DEEPFASHION_IMAGES = 44_096


def raw_bytes(params: Params) -> tuple[int, int, int]:
    """(data/raw when done, extra held while downloading: the archive beside its extraction,
    images in the source)."""
    data = params.data
    if data.source == "synthetic":
        return data.synthetic.count * SYNTHETIC_ENTRY_BYTES, 0, data.synthetic.count
    if data.source == "deepfashion":
        return DEEPFASHION_IMAGES_BYTES, DEEPFASHION_IMAGES_BYTES, DEEPFASHION_IMAGES
    if data.source == "local":
        images = Path(str(data.local.images)).expanduser()
        if images.is_file() and zipfile.is_zipfile(images):
            with zipfile.ZipFile(images) as z:
                infos = [i for i in z.infolist() if not i.is_dir()]
                return sum(i.file_size for i in infos), images.stat().st_size, len(infos)
        files = [f for f in images.rglob("*") if f.is_file()] if images.is_dir() else []
        return sum(f.stat().st_size for f in files), 0, len(files)
    raise UserError(f"data.source: unknown source {data.source!r}")


def lora_params(params: Params) -> int:
    """Trained LoRA parameters of the UNet (and the text encoder when it trains)."""
    table = LORA_PER_RANK["tiny" if params.model.base in ("tiny", "tiny-random") else "sd15"]
    train = params.train
    count = train.lora.rank * sum(table.get(t, 0) for t in train.lora.target_modules)
    if train.text_encoder_lora.enabled:
        count += train.text_encoder_lora.rank * sum(table.get(t, 0) for t in train.text_encoder_lora.target_modules)
    return count


def estimate(params: Params) -> dict:
    """Bytes each output of this run takes, what the download holds on top while it runs, and
    DVC's cache copies (none when the cache links instead of copying)."""
    raw, download_extra, sources = raw_bytes(params)
    kept = min(params.filter.sample_size, sources)
    pre = params.precompute
    long_side = pre.resolution if pre.shape == "square" else int(pre.resolution * 1.5)  # portraits: 64x96, 512x768
    latent = 4 * (pre.resolution // 8) * (long_side // 8) * (2 if pre.dtype == "float16" else 4)
    lora = 4 * lora_params(params)
    local_base = Path(params.model.base).expanduser()
    base = _tree_bytes(local_base) if local_base.is_dir() else BASE_BYTES.get(params.model.base, BASE_BYTES["hub"])
    outputs = {
        "data/raw": raw,
        "data/export": raw * kept // max(1, sources) if params.filter.export_zip else 0,
        "data/fashion_data.csv": kept * CSV_ROW_BYTES,
        "data/latents": kept * (latent * (2 if pre.flipped else 1) + INDEX_ITEM_BYTES),  # x2: mirrored too
        "models/base": base,
        "models/lora": 3 * lora,  # best, last, kohya
        "models/checkpoints": int(4.4 * lora) + (lora if params.train.ema.enabled else 0) + 2 * REPORTS_BYTES,
        "reports": REPORTS_BYTES,
    }
    link = cache_link_type()
    cache = 0 if link in ("hardlink", "symlink") else sum(outputs[k] for k in CACHED)
    hub = base if params.model.base not in BASE_BYTES and not local_base.is_dir() else 0
    return {"outputs": outputs, "download_extra": download_extra, "workspace": sum(outputs.values()),
            "cache": cache, "cache_type": link, "hub_download": hub, "lora_params": lora // 4}


def _dvc_config(root: Path) -> configparser.ConfigParser:
    """DVC's project config (`.dvc/config`, then `config.local` over it)."""
    parser = configparser.ConfigParser()
    parser.read([root / ".dvc/config", root / ".dvc/config.local"])
    return parser


def cache_link_type(root: Path = Path(".")) -> str:
    """The first link type of DVC's `cache.type`; DVC's default `reflink,copy` copies on
    filesystems without reflinks (ext4, tmpfs)."""
    first = _dvc_config(root).get("cache", "type", fallback="reflink,copy").split(",")[0].strip()
    return first if first != "reflink" else "reflink,copy"


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloads (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def cache_dir(root: Path = Path(".")) -> Path:
    return (root / ".dvc" / _dvc_config(root).get("cache", "dir", fallback="cache")).resolve()


def additional_need(report: dict, root: Path = Path("."), cache: Path | None = None,
                    outputs: tuple[str, ...] | None = None) -> dict[Path, int]:
    """Bytes still to be found on each filesystem (keyed by a path on it) for `outputs` (all by
    default): outputs already in the workspace are replaced by ones of about their size, the
    cache is taken to hold one version of each output already (what it holds is subtracted),
    and every run adds a new adapter to it."""
    cache = cache or cache_dir(root)
    keys = outputs or tuple(report["outputs"])
    est = report["outputs"]
    workspace = sum(max(0, est[k] - (_tree_bytes(root / k) if (root / k).exists() else 0)) for k in keys)
    if "data/raw" in keys and not (root / "data/raw").exists():
        workspace += report["download_extra"]
    cached = 0
    if report["cache"]:
        held = _tree_bytes(cache) if cache.exists() else 0
        cached = max(0, sum(est[k] for k in keys if k in CACHED) - held)
        cached += est["models/lora"] if "models/lora" in keys else 0
    # a hub base is downloaded into the Hugging Face cache first (another filesystem, often $HOME)
    hub = report.get("hub_download", 0) if "models/base" in keys and not (root / "models/base").exists() else 0
    needs: dict[int, list] = {}
    for where, need in ((root, workspace), (cache, cached), (hub_cache_dir(), hub)):
        probe = existing_parent(where)
        needs.setdefault(os.stat(probe).st_dev, [probe.resolve(), 0])[1] += need
    return {probe: need for probe, need in needs.values()}


def check_free_space(needs: dict[Path, int]) -> list[str]:
    """Stop with one line when a filesystem has less free space than this run still needs there;
    returns warnings for those within the margin."""
    warnings = []
    for probe, need in needs.items():
        free = free_bytes(probe)
        if free < need:
            raise UserError(f"disk: this run needs about {human_bytes(need)} more on the filesystem of {probe} and "
                            f"{human_bytes(free)} is free (the estimate by output is in reports/disk.json). Free space, "
                            "point DVC's cache elsewhere (`dvc cache dir /bigger/disk`), link instead of copying "
                            "(`dvc config cache.type hardlink,symlink`) or drop unused cache entries (`dvc gc -w`)")
        if need and free < need * MARGIN:
            warnings.append(f"disk: {human_bytes(free)} free on the filesystem of {probe}, close to the {human_bytes(need)} "
                            "this run still needs there")
    return warnings


def ensure_space(params: Params, *outputs: str) -> None:
    """A writing stage's own check when it starts (free space may have changed since the check
    stage): its outputs in the workspace and their copies in DVC's cache. One line when short."""
    try:
        warnings = check_free_space(additional_need(estimate(params), outputs=outputs))
    except UserError as e:  # DVC removed this stage's outputs before it started; its cache did not
        raise UserError(f"{e}. This stage's previous outputs are still in DVC's cache: `dvc checkout` restores "
                        "them") from None
    for warning in warnings:
        log.warning("%s", warning)
