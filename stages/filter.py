"""filter stage: data/raw -> data/fashion_data.csv + reports/filter.json (+ optional zip export)."""

import logging
import time
import zipfile
from pathlib import Path

from fashion_lora.filtering import filter_entries, sample_and_split, to_frame
from fashion_lora.params import load_params, to_dict
from fashion_lora.captions import load_captions
from fashion_lora.utils import atomic_dir, atomic_write_text, run_stage, write_json

log = logging.getLogger("stages.filter")
RAW = Path("data/raw")
CSV = Path("data/fashion_data.csv")
EXPORT = Path("data/export")
REPORT = Path("reports/filter.json")


def main() -> None:
    params = load_params()
    p = params.filter
    captions = load_captions(RAW / "captions.json")
    t0 = time.perf_counter()
    kept, drops, converted = filter_entries(captions, RAW / "images", p)
    seconds = time.perf_counter() - t0
    rows = sample_and_split(kept, p.sample_size, p.val_fraction, params.seed)
    df = to_frame(rows, str(RAW / "images"))
    atomic_write_text(CSV, df.to_csv(index=False))

    with atomic_dir(EXPORT) as out:
        if p.export_zip:
            with zipfile.ZipFile(out / "fashion_subset.zip", "w", zipfile.ZIP_STORED) as zf:
                zf.writestr("fashion_data.csv", df.assign(image_path=["images/" + n for n in df.image_name])
                            .to_csv(index=False))
                for name in df.image_name:
                    zf.write(RAW / "images" / name, f"images/{name}")
        else:
            (out / "README.txt").write_text("Set filter.export_zip: true to export the kept images "
                                            "and CSV as fashion_subset.zip here.\n")

    decoded = len(kept) + sum(v for k, v in drops.items() if k not in
                              ("unsafe_caption_key", "caption_not_string", "caption_too_short",
                               "duplicate_name_case", "missing_caption"))
    counts = df.split.value_counts().to_dict()
    report = {
        "input_captions": len(captions),
        "input_images": sum(1 for f in (RAW / "images").iterdir() if f.is_file()),
        "passed_rules": len(kept),
        "kept": len(df),
        "train": int(counts.get("train", 0)),
        "val": int(counts.get("val", 0)),
        "dropped": dict(drops),
        "converted_modes": dict(converted),
        "images_per_second": round(decoded / seconds, 1) if seconds > 0 else None,
        "params": to_dict(p),
    }
    write_json(REPORT, report)
    log.info("kept %d of %d captions (train %d, val %d); dropped %s; %.0f images/s",
             len(df), len(captions), report["train"], report["val"],
             {k: v for k, v in drops.items() if v}, report["images_per_second"] or 0)


if __name__ == "__main__":
    run_stage(main)
