"""Masks drawn while training against masks prepared once: the same small corpus, a lexicon of
20,000 terms, the same model and time; and the time to draw one epoch of fresh masks."""

import json
import os
import random
import subprocess
import sys
import time

from benchmarks.common import HERE, print_table, recipe_in_child, restoration_cells, tiny_model_folder

MASKING = {  # name: train.py constants (None: the same text prepared once by prepare.py)
    "prepared by prepare.py (static)": None,
    "raw text, FRESH_MASKS=False (static)": {"FRESH_MASKS": False},
    "raw text, FRESH_MASKS=True": {"FRESH_MASKS": True},
    "raw text, FRESH_MASKS=True, NOISE=0.02": {"FRESH_MASKS": True, "NOISE": 0.02},
    "raw text, FRESH_MASKS=True, DATALOADER_WORKERS=1": {"FRESH_MASKS": True, "DATALOADER_WORKERS": 1},
}
PREPARED, FRESH = "prepared by prepare.py (static)", "raw text, FRESH_MASKS=True"


def bench_masking(options, folder, documents=1000, budget=120, terms=20_000, found_in_text=3_000):
    """The same small corpus (the first `documents` sentences of demo/corpus.txt, repeats left out as
    train.py leaves them out; validation: demo/corpus_valid.txt, which shares no sentence with it,
    masked once), a lexicon of `terms` terms (bench_lexicon), the same tiny model and the same time:
    masked once by prepare.py, masked once while training, masked afresh every epoch, afresh with
    fresh OCR-like noise, and afresh in a DataLoader worker process. Evaluated as train.py evaluates,
    on every validation example. Then the seconds one epoch of fresh masks takes to draw."""
    from domainfocus.data import build_masker, mask_once, read_pieces, write_examples

    work = os.path.join(folder, "masking")
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(HERE, "demo", "corpus.txt"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()[:documents]
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    config = {**options.train.default_config(), "TRAIN_FILE": corpus}
    pieces = read_pieces(corpus, config, 0)
    lexicon = bench_lexicon(os.path.join(work, "lexicon.txt"), pieces["train"], terms, found_in_text)
    config["LEXICON_FILE"] = lexicon
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
    masker = build_masker(config)
    covered = sum(end - start for piece in pieces["train"] for start, end in masker.lexicon.find(piece))
    print(f"\nMasking, {len(pieces['train']):,} training and {len(pieces['valid']):,} validation sentences, "
          f"a lexicon of {len(masker.lexicon.terms):,} terms (the demo's among generated ones; found terms cover "
          f"{covered / sum(map(len, pieces['train'])):.0%} of the training text), "
          f"this tool's recipe for {budget:.0f} s each:\n")
    print_table(["masks", "epochs", "s/step", "real tokens/s", "eval_loss", "span_accuracy", "char_accuracy",
                 "exact_match"],
                [(name, f"{row['epochs']:.1f}", f"{row['seconds'] / max(row['steps'], 1):.4f}",
                  f"{row['real_tokens'] / row['seconds']:.0f}", f"{row['eval_loss']:.4f}", *restoration_cells(row))
                 for name, row in rows.items()])
    speed = {name: row["real_tokens"] / row["seconds"] for name, row in rows.items()}
    print("\nreal tokens/s against prepared JSON Lines: " + ", ".join(
        f"{name} x{value / speed[PREPARED]:.3f}" for name, value in speed.items() if MASKING[name]))
    step = {name: row["seconds"] / max(row["steps"], 1) for name, row in rows.items()}
    print(f"s/step, FRESH_MASKS=True against prepared: {step[FRESH]:.4f} / {step[PREPARED]:.4f} = "
          f"x{step[FRESH] / step[PREPARED]:.3f} ({step[FRESH] / step[PREPARED] - 1:+.1%})")
    searching, first, kept = epoch_draw_seconds(pieces["train"], config)
    print(f"\nOne epoch of fresh masks ({len(pieces['train']):,} sentences, the same lexicon; fastest of 7): "
          f"{searching * 1000:.1f} ms searching the lexicon at every draw (as before), {first * 1000:.1f} ms for "
          f"the first epoch (terms found and kept), {kept * 1000:.1f} ms for every later one "
          f"(x{kept / searching:.2f})")


def bench_lexicon(path, pieces, terms, found_in_text, seed=0):
    """A lexicon file of `terms` terms, as large as real clinical ones: demo/lexicon.txt's terms,
    `found_in_text` pieces of 2 to 6 characters cut from `pieces` (so that they match, and matching
    them costs what it costs), and strings of 2 to 6 of the pieces' characters that rarely match,
    all shuffled with a fixed seed. Cutting more from the text would mask most of it as terms."""
    from domainfocus.masking import maskable, read_lexicon

    rng = random.Random(seed)
    lexicon = set(read_lexicon(os.path.join(HERE, "demo", "lexicon.txt")))
    cuts = sorted({piece[start:start + length] for piece in pieces for length in range(2, 7)
                   for start in range(len(piece) - length + 1) if maskable(piece[start:start + length])})
    lexicon.update(rng.sample(cuts, min(found_in_text, len(cuts))))
    characters = sorted({character for piece in pieces for character in piece if maskable(character)})
    while len(lexicon) < terms:
        lexicon.add("".join(rng.choices(characters, k=rng.randint(2, 6))))
    ordered = sorted(lexicon)
    rng.shuffle(ordered)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(term + "\n" for term in ordered)
    return path


def epoch_draw_seconds(pieces, config, repeats=7):
    """Seconds to draw one epoch of fresh masks: (searching the lexicon at every draw, as train.py did
    before it kept each piece's terms; MaskedExamples' first epoch, which finds and keeps them; a later
    epoch, from the kept terms). The fastest of `repeats`, taken in turn, so that a busy moment of the
    machine does not fall on one of them only."""
    from domainfocus.data import MaskedExamples, build_masker

    masker, seed = build_masker(config), config["SEED"]

    def searching():
        for index, piece in enumerate(pieces):
            masker.reseed(f"{seed}:1:{index}")
            masker.example(piece)

    def drawing(dataset, epoch):
        for index in range(len(pieces)):
            dataset.draw(epoch, index)

    times = {"searching": [], "first": [], "kept": []}
    for _ in range(repeats):
        dataset = MaskedExamples(pieces, masker, seed, fresh=True)
        for name, draw, arguments in (("searching", searching, ()), ("first", drawing, (dataset, 0)),
                                      ("kept", drawing, (dataset, 1))):
            started = time.perf_counter()
            draw(*arguments)
            times[name].append(time.perf_counter() - started)
    return min(times["searching"]), min(times["first"]), min(times["kept"])
