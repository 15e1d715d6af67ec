"""Benchmarks, run on this machine and printed as a markdown table.

    python bench.py                 # all sections
    python bench.py --only prepare  # one section

Sections:
  prepare  prepare.py throughput (MB of Chinese text per second on one core) with a 20,000-term
           lexicon, and its peak memory for two corpus sizes: equal peaks show that it streams.

Corpora and lexicons are synthetic (generated from a fixed seed), so the figures are reproducible
and no private text is needed.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

# Common CJK characters: the first 3,000 code points of the unified block are close enough in
# frequency profile for a throughput measurement.
CHARACTERS = [chr(code) for code in range(0x4E00, 0x4E00 + 3000)]
PUNCTUATION = "，。；、：（）"


def synthetic_corpus(folder, megabytes, terms, seed=0):
    """A .txt corpus of about `megabytes` MB: documents of sentences where about 1 word in 4 is a term."""
    rng = random.Random(seed)
    path = os.path.join(folder, f"corpus-{megabytes}mb.txt")
    target = megabytes * 1_000_000
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            sentences = []
            for _ in range(rng.randint(3, 12)):
                words = [rng.choice(terms) if rng.random() < 0.25 else "".join(rng.choices(CHARACTERS, k=rng.randint(1, 4)))
                         for _ in range(rng.randint(4, 12))]
                sentences.append(rng.choice(PUNCTUATION[:4]).join(words) + "。")
            document = "".join(sentences) + "\n"
            handle.write(document)
            written += len(document.encode("utf-8"))
    return path


def synthetic_lexicon(folder, count=20_000, seed=0):
    rng = random.Random(seed)
    terms = sorted({"".join(rng.choices(CHARACTERS, k=rng.randint(2, 8))) for _ in range(count * 2)})[:count]
    path = os.path.join(folder, "lexicon.txt")
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{term}\t{rng.randint(1, 1000)}\n" for term in terms)
    return path, terms


def run_prepare_alone(corpus, lexicon, out):
    """prepare.py in its own process (one core): (seconds, peak resident memory in MB)."""
    code = (
        "import resource, sys, time\n"
        "from prepare import parse_options, prepare\n"
        f"options = parse_options(['--text', {corpus!r}, '--lexicon', {lexicon!r}, '--out', {out!r}])\n"
        "start = time.perf_counter()\n"
        "prepare(options, report=lambda line: None)\n"
        "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    seconds, peak = result.stdout.split()
    return float(seconds), float(peak)


def bench_prepare(sizes=(2, 8)):
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        lexicon, terms = synthetic_lexicon(folder)
        for megabytes in sizes:
            corpus = synthetic_corpus(folder, megabytes, terms)
            size = os.path.getsize(corpus) / 1e6
            seconds, peak = run_prepare_alone(corpus, lexicon, os.path.join(folder, f"out-{megabytes}"))
            rows.append((f"{size:.1f} MB Chinese, 20,000-term lexicon", f"{size / seconds:.2f} MB/s",
                         f"{seconds:.1f} s", f"{peak:.0f} MB"))
    print("| prepare.py | throughput | time | peak memory |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main():
    parser = argparse.ArgumentParser(description="DomainFocus benchmarks")
    parser.add_argument("--only", choices=("prepare",), help="run one section")
    parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d')}\n")
    bench_prepare()


if __name__ == "__main__":
    main()
