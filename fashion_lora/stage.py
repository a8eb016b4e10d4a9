"""A stage process's entry: logging, the one-line answer to user errors and Ctrl-C (exit codes 2
and 130), and pool workers that leave Ctrl-C to their parent."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import DiskFull, UserError, is_disk_full

log = logging.getLogger("fashion_lora")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # Libraries we drive are chatty at INFO; keep their warnings.
    for name in ("diffusers", "transformers", "accelerate", "peft", "PIL", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # per-file "Loading weights" bars
    with contextlib.suppress(ImportError):
        import diffusers

        diffusers.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(): user-fixable errors become one log line and exit code 2."""
    from .params import ParamError

    setup_logging()
    try:
        main()
    except (ParamError, UserError) as e:
        log.error("%s", e)
        sys.exit(2)
    except OSError as e:
        if not is_disk_full(e):
            raise
        log.error("%s", DiskFull.from_error(e, Path.cwd()))  # a full disk outside the atomic writers
        sys.exit(2)
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback, the shell's exit code for SIGINT
        log.error("%s", str(e) or "interrupted; outputs are written atomically, so each is the previous "
                  "complete one or absent. Run the same `dvc repro` / `dvc exp run` command again to finish")
        sys.exit(130)


def ignore_sigint() -> None:
    """Pool-worker initializer: Ctrl-C reaches the whole process group, and only the parent
    should answer it (workers would each print a KeyboardInterrupt traceback)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
