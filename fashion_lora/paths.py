"""Every file and folder the stages read and write, relative to the repository root.

One place for the pipeline's layout: stages and tests use these names, and a test keeps
`dvc.yaml`'s deps and outs in step with them.
"""

from pathlib import Path

PARAMS = Path("params.yaml")

# check (runs first: a bad param stops here, before DVC deletes any output)
CHECK = Path("reports/check.txt")
DISK_REPORT = Path("reports/disk.json")  # the disk this run needs, by output (fashion_lora/disk.py)

# download
RAW = Path("data/raw")
RAW_IMAGES = RAW / "images"
RAW_CAPTIONS = RAW / "captions.json"
RAW_LABELS = RAW / "labels"  # the data set's label files, where the source has them
RAW_SOURCE = RAW / "source.json"
# Google Drive files as fetched (DeepFashion): kept across failures for resume, neither git nor DVC
DOWNLOADS = Path("data/downloads")
# base_model
BASE = Path("models/base")
BASE_REPORT = Path("reports/base_model.json")
# filter
CSV = Path("data/fashion_data.csv")
EXPORT = Path("data/export")
FILTER_REPORT = Path("reports/filter.json")
# the captions' token lengths and the window that holds them (train.max_token_length: auto);
# apart from filter.json, which records timings, so that train reruns only when the window moves
CAPTION_TOKENS = Path("reports/caption_tokens.json")
TOKENIZER = BASE / "tokenizer"  # what filter measures the captions with
# precompute
LATENTS = Path("data/latents")
PRECOMPUTE_REPORT = Path("reports/precompute.json")
# train
LORA = Path("models/lora")
# train's private resume state, deliberately not a DVC out: `dvc exp run` checks out every out
# before running and would put the last completed run's checkpoint over an interrupted one.
CHECKPOINTS = Path("models/checkpoints")
TRAIN_LIVE = Path("reports/train")
TRAIN_REPORT = Path("reports/train_report.json")
# judge
JUDGE = Path("models/judge")
JUDGE_REPORT = Path("reports/judge.json")
# evaluate
EVALUATE = Path("reports/evaluate")
EVALUATE_METRICS = EVALUATE / "metrics.json"
EVALUATE_PER_ATTRIBUTE = EVALUATE / "attributes.json"  # rows of the per-attribute bars
EVALUATE_SHEET = EVALUATE / "attribute_sheet.png"
EVALUATE_READS = EVALUATE / "attribute_reads.csv"  # a row per drawn image and attribute its caption asks for
EVALUATE_CONFUSION = EVALUATE / "confusion.json"  # per attribute and model: values asked x values read
# the rows `dvc plots` counts into one confusion matrix per model
EVALUATE_CONFUSION_ROWS = {m: EVALUATE / f"confusion_{m}.json" for m in ("base", "lora")}
# generate
GENERATE_IMAGES = Path("reports/generate/images")
GENERATE_GRID = Path("reports/generate/grid.png")
GENERATE_METRICS = Path("reports/generate/metrics.json")
# report
RESULTS = Path("reports/results.md")

NOT_DVC_OUTS = (CHECKPOINTS,)
