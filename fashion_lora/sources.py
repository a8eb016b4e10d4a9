"""Raw data sources for the download stage: synthetic, DeepFashion (gdown) and local paths.

Every source fills a staging folder with `images/`, `captions.json` (a flat
`{file_name: caption}` dict) and, where the source has them, the data set's label files under
`labels/` (fashion_lora/labels.py); the stage swaps that folder in whole, so a failed or
partial download never leaves anything that looks complete.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from . import embedded, labels, paths
from .archives import flatten_into, safe_extract
from .captions import load_captions
from .downloads import Downloader, fetch_file, gdown_download
from .errors import UserError, human_bytes
from .params import ArchiveLimits, Params

log = logging.getLogger(__name__)

def _captions_from(path: Path, limits: ArchiveLimits, work: Path) -> dict:
    """Captions from a .json file, or from a zip holding exactly one .json."""
    if zipfile.is_zipfile(path):
        extracted = safe_extract(path, work, limits.max_total_bytes, limits.max_ratio, limits.max_entries)
        jsons = [f for f in extracted if f.suffix.lower() == ".json"]
        if len(jsons) != 1:
            raise UserError(f"{path}: a captions zip must hold exactly one .json file, found {len(jsons)}")
        return load_captions(jsons[0])
    return load_captions(path)


def _images_from(path: Path, limits: ArchiveLimits, images: Path, work: Path) -> int:
    """Fill `images` from a zip (safely extracted) or a folder (copied; links skipped)."""
    if path.is_file() and zipfile.is_zipfile(path):
        files = safe_extract(path, work, limits.max_total_bytes, limits.max_ratio, limits.max_entries)
        return flatten_into(files, images)
    if path.is_dir():
        images.mkdir(parents=True, exist_ok=True)
        n = skipped = 0
        for f in sorted(path.rglob("*")):
            if f.is_symlink():
                skipped += 1  # a link could point anywhere on the machine: never followed
                continue
            if f.is_file():
                if (images / f.name).exists():
                    raise UserError(f"{path}: two files share the name {f.name!r}; captions are keyed "
                                    "by file name, so this is ambiguous")
                shutil.copyfile(f, images / f.name)
                n += 1
        if skipped:
            log.warning("skipped %d symbolic links under %s", skipped, path)
        return n
    raise UserError(f"data.local.images: {path} is neither a folder nor a zip archive")


def _labels_from(path: Path, limits: ArchiveLimits, out: Path, work: Path) -> int:
    """Copy the data set's label files from a folder or zip (found by file name, wherever they
    sit in it) into `out` in the data set's layout; returns how many were found. Each file is
    parsed, so a malformed one stops the download with its line."""
    if path.is_file() and zipfile.is_zipfile(path):
        files = safe_extract(path, work, limits.max_total_bytes, limits.max_ratio, limits.max_entries)
    elif path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file() and not f.is_symlink()]
    else:
        raise UserError(f"{path}: the labels must be a folder or a zip archive of the data set's label files")
    found = 0
    for rel, attrs in labels.FILES:
        hits = [f for f in files if f.name == Path(rel).name]
        if len(hits) > 1:
            raise UserError(f"{path}: holds {len(hits)} files named {Path(rel).name}; keep one")
        if hits:
            labels.read_file(hits[0], attrs)
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hits[0], out / rel)
            found += 1
    if not found:
        raise UserError(f"{path}: none of the label files ({', '.join(Path(r).name for r, _ in labels.FILES)}) "
                        "is in it")
    return found


def fetch(params: Params, stage_dir: Path, downloader: Downloader = gdown_download,
          downloads: Path = paths.DOWNLOADS) -> dict:
    """Fill `stage_dir` with images/ and captions.json from `data.source`; return provenance.

    DeepFashion's files are fetched into `downloads` (fashion_lora/downloads.py), smallest first,
    and extracted from there; that folder outlives a failure, so a rerun resumes.
    """
    data = params.data
    images = stage_dir / "images"
    with tempfile.TemporaryDirectory(dir=stage_dir.parent, prefix=".download-work-") as tmp:
        work = Path(tmp)
        if data.source == "synthetic":
            summary = embedded.write_dataset(stage_dir, data.synthetic.count, params.seed + data.synthetic.seed_offset,
                                              data.synthetic.frequencies)
            return {"source": "synthetic", "count": summary["count"], "products": summary["products"],
                    "without_label_line": summary["unlabeled"], "deliberately_bad": summary["bad"]}
        if data.source == "deepfashion":
            df, key = data.deepfashion, "data.deepfashion."
            # the small files first: a quota error on them must not come after 5.4 GB
            cap_file, cap_sha = fetch_file("the captions", df.captions_id, f"captions-{df.captions_id}.download",
                                           df.captions_sha256, key + "captions_sha256", downloads, downloader)
            prov = {"source": "deepfashion", "captions_sha256": cap_sha}
            if df.labels_id:
                lab_zip, prov["labels_sha256"] = fetch_file(
                    "the label files", df.labels_id, f"labels-{df.labels_id}.zip", df.labels_sha256,
                    key + "labels_sha256", downloads, downloader)
            img_zip, prov["images_sha256"] = fetch_file(
                "the image archive", df.images_id, f"images-{df.images_id}.zip", df.images_sha256,
                key + "images_sha256", downloads, downloader)
            captions = _captions_from(cap_file, data.archive, work / "captions")
            if df.labels_id:
                prov["label_files"] = _labels_from(lab_zip, data.archive, stage_dir / "labels", work / "labels")
            n = _images_from(img_zip, data.archive, images, work / "images")
            log.info("the downloaded files stay in %s (%s) for a rerun; delete it to free the space",
                     downloads, human_bytes(sum(f.stat().st_size for f in downloads.iterdir() if f.is_file())))
        elif data.source == "local":
            img_path, cap_path = Path(str(data.local.images)), Path(str(data.local.captions))
            for key, p in (("data.local.images", img_path), ("data.local.captions", cap_path)):
                if not p.exists():
                    raise UserError(f"{key}: {p} does not exist")
            captions = _captions_from(cap_path, data.archive, work / "captions")
            n = _images_from(img_path, data.archive, images, work / "images")
            prov = {"source": "local", "images": str(img_path), "captions": str(cap_path)}
            if data.local.labels:
                lab_path = Path(str(data.local.labels))
                if not lab_path.exists():
                    raise UserError(f"data.local.labels: {lab_path} does not exist (or set it to null)")
                prov["labels"] = str(lab_path)
                prov["label_files"] = _labels_from(lab_path, data.archive, stage_dir / "labels", work / "labels")
        else:  # validated in params; spelled out so a new source cannot fall through silently
            raise UserError(f"data.source: unknown source {data.source!r}")
    (stage_dir / "captions.json").write_text(json.dumps(captions, indent=1, ensure_ascii=False))
    return {**prov, "images": n, "captions": len(captions)}
