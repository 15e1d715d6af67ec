"""Start-up: the time from starting train.py to its first training step, first and second start."""

import os
import subprocess
import sys
import time

from benchmarks.common import HERE, model_folder


def bench_startup(options, folder, copies=(1, 40, 160), raw_megabytes=96):
    """Seconds from start to the first training step: first start, then a second with the same data
    (which reuses the tokenization cache), for the demo data as it is (0.6 MB) and repeated to
    about 24 and 96 MB; and for raw text with masks drawn while training (demo/corpus.txt repeated
    to about `raw_megabytes` MB)."""
    model = model_folder(options, folder)
    cases = []
    with open(os.path.join(HERE, "demo", "train.jsonl"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    for count in copies:
        cases.append((f"train-{count}.jsonl", lines * count, [], f"{len(lines) * count:,} examples"))
    with open(os.path.join(HERE, "demo", "corpus.txt"), encoding="utf-8") as handle:
        raw = handle.read().splitlines()
    repeats = round(raw_megabytes * 1e6 / sum(len(line.encode("utf-8")) + 1 for line in raw))
    cases.append(("corpus.txt", raw * repeats, [f"--LEXICON_FILE={os.path.join(HERE, 'demo', 'lexicon.txt')}"],
                  f"{len(raw) * repeats:,} raw sentences, masks drawn while training"))
    for name, data_lines, extra, what in cases:
        data = os.path.join(folder, name)
        with open(data, "w", encoding="utf-8") as handle:
            handle.write("\n".join(data_lines) + "\n")
        timings = []
        for start in ("first", "second"):
            began = time.perf_counter()
            process = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "train.py"), "--demo", f"--MODEL_NAME_OR_PATH={model}",
                 f"--TRAIN_FILE={data}", f"--VALID_FILE={options.valid_file}", *extra,
                 f"--OUTPUT_DIR={os.path.join(folder, f'{start}-{name}')}", "--LOGGING_STEPS=1",
                 "--GEN_EVAL_SAMPLES=0"],
                cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                env={**os.environ, "HF_HOME": os.path.join(folder, f"startup-cache-{name}")})
            for line in process.stdout:
                if " step 1/" in line:
                    timings.append(time.perf_counter() - began)
                    break
            process.kill()
            process.wait()
        print(f"\nStart-up to the first step with {os.path.getsize(data) / 1e6:.1f} MB of training data "
              f"({what}): first start {timings[0]:.1f} s, second start {timings[1]:.1f} s "
              f"(x{timings[1] / timings[0]:.2f}; the second reuses the tokenization cache).")
