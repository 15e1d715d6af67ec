"""The console and train.log: progress lines on the console (above the live bar in a terminal) and,
on the main process, in OUTPUT_DIR/train.log without carriage returns."""

import logging
import os
import sys

from domainfocus.distributed import is_main_process

logger = logging.getLogger("domainfocus")


class TqdmLineHandler(logging.Handler):
    def emit(self, record):
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stdout)


def setup_logging(output_dir):
    """Progress lines to the console and, without carriage returns, to OUTPUT_DIR/train.log."""
    from transformers.utils import logging as transformers_logging

    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    # In a terminal the lines are written above the live progress bar; in a file, plainly.
    console = TqdmLineHandler() if sys.stdout.isatty() else logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    handlers = [console]
    main_process = is_main_process()
    if output_dir and main_process:
        os.makedirs(output_dir, exist_ok=True)
        log_file = logging.FileHandler(os.path.join(output_dir, "train.log"), encoding="utf-8")
        log_file.setFormatter(formatter)
        handlers.append(log_file)
    logger.handlers[:] = handlers
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    logging.raiseExceptions = False  # a full disk must not turn every later log line into a traceback
    transformers_logging.set_verbosity_warning()
    transformers_logging.disable_progress_bar()  # "Writing model shards" bars would clutter the log


def format_duration(seconds):
    seconds = int(round(seconds))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock
