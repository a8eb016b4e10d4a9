"""Time the filter on a folder in a light process (no torch import), as the filter stage runs.

    python -m benchmarks._filter_timing ROOT WORKERS   -> prints seconds for one full pass
"""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from fashion_lora.filtering import filter_entries
from fashion_lora.images import inspect_image
from fashion_lora.params import load_params

if __name__ == "__main__":
    root, workers = Path(sys.argv[1]), int(sys.argv[2])
    fp = load_params().filter
    captions = json.loads((root / "captions.json").read_text())
    t0 = time.perf_counter()
    if workers == 0:  # naive: one image at a time in this process
        for n in sorted(captions):
            inspect_image(root / "images" / n, fp.formats, fp.min_resolution, fp.non_rgb, fp.max_pixels)
    else:
        filter_entries(captions, root / "images", replace(fp, workers=workers))
    print(time.perf_counter() - t0)
