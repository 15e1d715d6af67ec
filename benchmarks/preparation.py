"""prepare.py: throughput on synthetic Chinese with a 20,000-term lexicon, and peak memory for two
corpus sizes (equal peaks show that it streams)."""

import os
import subprocess
import sys
import tempfile

from benchmarks.common import HERE, print_table, synthetic_corpus, synthetic_lexicon


def run_prepare_alone(corpus, lexicon, out):
    """prepare.py in its own process (one core): (seconds, peak resident memory in MB)."""
    code = (
        "import time\n"
        "from benchmarks.common import peak_resident_mb\n"
        "from prepare import parse_options, prepare\n"
        f"options = parse_options(['--text', {corpus!r}, '--lexicon', {lexicon!r}, '--out', {out!r}])\n"
        "start = time.perf_counter()\n"
        "prepare(options, report=lambda line: None)\n"
        "print(time.perf_counter() - start, peak_resident_mb())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=HERE)
    seconds, peak = result.stdout.split()
    return float(seconds), float(peak)


def bench_prepare(options, folder, sizes=(2, 8)):
    """prepare.py's throughput and peak memory, a corpus of each size in `sizes` MB."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        lexicon, terms = synthetic_lexicon(work)
        for megabytes in sizes:
            corpus = synthetic_corpus(work, megabytes, terms)
            size = os.path.getsize(corpus) / 1e6
            seconds, peak = run_prepare_alone(corpus, lexicon, os.path.join(work, f"out-{megabytes}"))
            rows.append((f"{size:.1f} MB Chinese, 20,000-term lexicon", f"{size / seconds:.2f} MB/s",
                         f"{seconds:.1f} s", f"{peak:.0f} MB"))
    print()
    print_table(["prepare.py", "throughput", "time", "peak memory"], rows)
