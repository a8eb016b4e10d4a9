"""filter stage: data/raw -> data/fashion_data.csv (with the labels joined) + reports/filter.json
and reports/caption_tokens.json (the captions measured with models/base's tokenizer) (+ optional
zip export)."""

import logging
import time

from fashion_lora import paths, tokens
from fashion_lora.base import load_tokenizer
from fashion_lora.captions import load_captions
from fashion_lora.devices import configure_torch
from fashion_lora.files import atomic_dir, atomic_write_text, write_json
from fashion_lora.filtering import filter_entries, filter_report, join_labels, sample_and_split, to_frame, write_export_zip
from fashion_lora.labels import read_labels
from fashion_lora.params import load_params
from fashion_lora.stage import run_stage

log = logging.getLogger("stages.filter")


def main() -> None:
    params = load_params()
    configure_torch(params, "filter")
    settings = params.filter
    captions = load_captions(paths.RAW_CAPTIONS)
    tokenizer = load_tokenizer(paths.TOKENIZER)  # before any output is written: a missing base stops here
    t0 = time.perf_counter()
    kept, drops, converted = filter_entries(captions, paths.RAW_IMAGES, settings)
    seconds = time.perf_counter() - t0
    rows = sample_and_split(kept, settings.sample_size, settings.val_fraction, params.seed)
    rows, label_counts = join_labels(rows, read_labels(paths.RAW_LABELS), {k.strip() for k in captions})
    df = to_frame(rows, str(paths.RAW_IMAGES))
    atomic_write_text(paths.CSV, df.to_csv(index=False))
    with atomic_dir(paths.EXPORT) as out:
        if settings.export_zip:
            write_export_zip(out / "fashion_subset.zip", df, paths.RAW_IMAGES)
        else:
            (out / "README.txt").write_text("Set filter.export_zip: true to export the kept images "
                                            "and CSV as fashion_subset.zip here.\n")
    token_record = tokens.measure(tokenizer, list(df.caption))
    write_json(paths.CAPTION_TOKENS, token_record)
    on_disk = sum(1 for f in paths.RAW_IMAGES.iterdir() if f.is_file())
    report = filter_report(captions, on_disk, kept, df, drops, converted, seconds, settings, label_counts)
    write_json(paths.FILTER_REPORT, {**report, "caption_tokens": token_record})
    log.info("kept %d of %d captions (train %d, val %d); dropped %s; %.0f images/s",
             len(df), len(captions), report["train"], report["val"],
             {k: v for k, v in drops.items() if v}, report["images_per_second"] or 0)
    log.info("labels: %d from the label files, %d from their captions, %d without; captions agree with "
             "the labels on %s of what they state", label_counts["from_file"], label_counts["from_caption"],
             label_counts["without"], label_counts["caption_agreement"])
    log.info("captions: %d tokens at the longest, %d over 77: a %d-token window holds them (train.max_token_length: "
             "auto)", token_record["longest"], token_record["over_77"], token_record["max_token_length"])


if __name__ == "__main__":
    run_stage(main)
