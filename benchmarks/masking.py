"""Masks drawn while training against masks prepared once: the same small corpus, model and time."""

import json
import os
import subprocess
import sys

from benchmarks.common import HERE, print_table, recipe_in_child, restoration_cells, tiny_model_folder

MASKING = {  # name: train.py constants (None: the same text prepared once by prepare.py)
    "prepared by prepare.py (static)": None,
    "raw text, FRESH_MASKS=False (static)": {"FRESH_MASKS": False},
    "raw text, FRESH_MASKS=True": {"FRESH_MASKS": True},
    "raw text, FRESH_MASKS=True, NOISE=0.02": {"FRESH_MASKS": True, "NOISE": 0.02},
    "raw text, FRESH_MASKS=True, DATALOADER_WORKERS=1": {"FRESH_MASKS": True, "DATALOADER_WORKERS": 1},
}


def bench_masking(options, folder, documents=1000, budget=120):
    """The same small corpus (the first `documents` sentences of demo/corpus.txt, repeats left out as
    train.py leaves them out; validation: demo/corpus_valid.txt, which shares no sentence with it,
    masked once), the same tiny model and the same time: masked once by prepare.py, masked once while training, masked afresh every
    epoch, afresh with fresh OCR-like noise, and afresh in a DataLoader worker process. Evaluated
    as train.py evaluates, on every validation example."""
    from domainfocus.data import build_masker, mask_once, read_pieces, write_examples

    work = os.path.join(folder, "masking")
    os.makedirs(work, exist_ok=True)
    lexicon = os.path.join(HERE, "demo", "lexicon.txt")
    with open(os.path.join(HERE, "demo", "corpus.txt"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()[:documents]
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    config = {**options.train.default_config(), "TRAIN_FILE": corpus, "LEXICON_FILE": lexicon}
    pieces = read_pieces(corpus, config, 0)
    pieces["valid"] = read_pieces(os.path.join(HERE, "demo", "corpus_valid.txt"), config, 0)["train"]
    train_text, valid_file = os.path.join(work, "train.txt"), os.path.join(work, "valid.jsonl")
    with open(train_text, "w", encoding="utf-8") as handle:
        handle.write("\n".join(pieces["train"]) + "\n")
    write_examples(valid_file, mask_once(pieces["valid"], build_masker(config), "bench:valid"))
    prepared = os.path.join(work, "prepared")  # its valid.jsonl stays empty: validation is the file above
    subprocess.run([sys.executable, os.path.join(HERE, "prepare.py"), "--text", train_text, "--lexicon", lexicon,
                    "--out", prepared, "--valid-ratio", "0"], check=True, stdout=subprocess.DEVNULL)  # as users run it
    model = tiny_model_folder(os.path.join(work, "model"), train_text)
    rows = {}
    for name, settings in MASKING.items():
        constants = {"LEXICON_FILE": lexicon, **settings} if settings else {}
        rows[name] = recipe_in_child(options, folder, model=model, budget=budget,
                                     extra=["--settings", json.dumps(constants), "--evaluate"],
                                     train_file=train_text if settings else os.path.join(prepared, "train.jsonl"),
                                     valid_file=valid_file)
    print(f"\nMasking, {len(pieces['train']):,} training and {len(pieces['valid']):,} validation sentences, "
          f"this tool's recipe for {budget:.0f} s each:\n")
    print_table(["masks", "epochs", "real tokens/s", "eval_loss", "span_accuracy", "char_accuracy", "exact_match"],
                [(name, f"{row['epochs']:.1f}", f"{row['real_tokens'] / row['seconds']:.0f}", f"{row['eval_loss']:.4f}",
                  *restoration_cells(row)) for name, row in rows.items()])
    speed = {name: row["real_tokens"] / row["seconds"] for name, row in rows.items()}
    prepared = speed["prepared by prepare.py (static)"]
    print("\nreal tokens/s against prepared JSON Lines: " + ", ".join(
        f"{name} x{value / prepared:.3f}" for name, value in speed.items() if MASKING[name]))
