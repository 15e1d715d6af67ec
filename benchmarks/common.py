"""What the benchmark sections share: synthetic Chinese text and lexicons, the tiny T5 built from
the training data, a recipe run in a process of its own, peak memory and markdown tables."""

import json
import os
import random
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository root: bench.py, train.py, demo/

RECIPES = {"original": "original recipe", "plain": "plain Hugging Face", "tool": "this tool"}

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


def peak_resident_mb():
    """This process's peak resident memory. Read from /proc (VmHWM), because getrusage's maxrss
    survives exec on Linux and would report the parent's peak, torch and all."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(header, rows):
    """A markdown table: `header` and each row a sequence of cells, already formatted."""
    for cells in (header, ["---"] * len(header), *rows):
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def restoration_cells(row):
    """A row's span_accuracy, char_accuracy and exact_match, as the tables show them."""
    return f"{row['span_accuracy']:.3f}", f"{row['char_accuracy']:.3f}", f"{row['exact_match']:.3f}"


def save_model(folder, tokenizer, model):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_model_folder(folder, train_file):
    """The tiny T5 train.py --demo builds, with its vocabulary from `train_file`, saved in `folder`."""
    from domainfocus.modeling import build_tiny_t5

    tokenizer, model = build_tiny_t5(train_file, "inputs", "targets", 42)
    return save_model(folder, tokenizer, model)


def model_folder(options, folder):
    """--model, else the tiny T5 built once (into `folder`) from --train-file."""
    if not options.model:
        options.model = tiny_model_folder(os.path.join(folder, "model"), options.train_file)
    return options.model


def recipe_in_child(options, folder, recipe="tool", model=None, budget=None, extra=(), environment=None,
                    train_file=None, valid_file=None):
    """One recipe (benchmarks/recipes.py) in a process of its own, so that peak memory is its own:
    `python bench.py --recipe ...`; returns its measurements."""
    out = os.path.join(folder, "recipe.json")
    subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), "--recipe", recipe, *extra,
                    "--model", model or model_folder(options, folder), "--train-file", train_file or options.train_file,
                    "--valid-file", valid_file or options.valid_file, "--budget", str(budget or options.budget),
                    "--out", out],
                   check=True, cwd=HERE,
                   env={**os.environ, "HF_HOME": os.path.join(folder, "hf-home"), **(environment or {})})
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)
