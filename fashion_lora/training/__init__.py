"""LoRA fine-tuning, the train stage's work, one module per concern:

- `loop`: the lifecycle (setup -> resume or replay -> loop -> finish) and the optimizer step;
- `setup`: accelerator, frozen base with its LoRA, optimizer, schedule, compile;
- `data`: seeded single-bucket batches, augmentation, text embeddings, the validation set;
- `state`: early stopping, run state, and the `Run` every phase works on (its `Model` type
  from `setup` is an annotation only);
- `ema`: the moving average of the LoRA weights;
- `checkpoint`: fingerprint, save/restore, dvclive snapshot, the finished-run record;
- `validation`: measure the adapter (pure) and record the result;
- `report`: adapters written to models/lora, the train report, replay of a finished run.
"""

from .loop import train
from .state import Outputs

__all__ = ["Outputs", "train"]
