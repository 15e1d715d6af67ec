"""Benchmarks, run on this machine and printed as markdown tables, baselines side by side.

    python bench.py                      # every section but callbacks, knobs and order, on the demo data and the tiny model
    python bench.py --only train         # one section (python bench.py --help lists them)
    python bench.py --model FOLDER --train-file F --valid-file F --budget 300   # your model and data

This file is the table of sections (SECTIONS below); the sections live in the benchmarks/ package,
one module per subject, and share its helpers (benchmarks/common.py) and its recipes
(benchmarks/recipes.py). Sections, in the order a full run takes them:

  restore    (benchmarks/decoding.py) restoration of the validation examples by a trained model
             (--model, else the demo trained here first): 1, 2, 4 and 8 beams, each with and without
             the lengths, and 4 beams with the lexicon (every term masked in the training data,
             alone and shuffled among 20,000 others) at lexicon bonuses 0 to 8; span_accuracy, char_accuracy,
             exact_match and spans/s; the accuracy of spans above and below a confidence of 0.5;
             the same spans joined into 3,000-character lines, restored in windows of whole sentences;
             and an archive's speed (documents and spans per second): plain model.generate with 4
             beams, greedy and 4-beam length-aware restoration, with the 20,000-term lexicon (3
             alternatives proven per span, and none: the choice alone), and restore.py in one
             process and in two under torchrun.
  calibration (benchmarks/calibration.py) the same model's span confidence on the validation
             examples split in halves by text digest: a temperature fitted on one half, the
             expected calibration error (ECE) of both halves before and after it, and the reliability
             diagram of the held-out half (docs/reliability-demo.png).
  ocr        (benchmarks/ocr.py) OCR in and out on the fixture page (tests/fixtures/ocr: clinical
             sentences rendered, stained, read by Tesseract): median confidences of clean and stained
             glyphs, glyphs counted lost per rule and --ocr-confidence threshold, and the pipeline
             tesseract -> restore.py -> ALTO / hOCR against the page's truth: stained characters
             found lost, restored right, and clean characters wrongly changed.
  review     (benchmarks/review.py) the review page of 500 and 5,000 synthetic documents: file
             size, and in headless Chromium the time to the data parsed, the first page of documents
             rendered, the load event and one page turn (median of 3 loads); skipped without
             chromium or selenium.
  train      (benchmarks/speed.py) three recipes on the same data, model and machine, each for the
             same wall-clock budget, each in its own process (so peak memory is its own):
               original  -- every example padded to 512 / 256 tokens, labels padded with the pad id
                            (the loss counts padding), random sampling, generation on the whole
                            validation set at every evaluation;
               plain HF  -- DataCollatorForSeq2Seq (dynamic padding, labels -100), random sampling,
                            AdamW, generation on the whole validation set;
               this tool -- train.py itself: the trainer its own load_model_and_data and
                            build_trainer give (its collator, length-grouped batches from a
                            precomputed length column in random order, its optimizer, callbacks and
                            evaluation: eval_loss on the whole validation set and restoration of
                            GEN_EVAL_SAMPLES examples), with the demo's constants, inputs and targets
                            up to 512 / 256 tokens, and no scheduled evaluation or checkpoint.
             Reports real (non-padding) tokens/s, steps/s, peak memory, the share of wall time an
             evaluation schedule of one evaluation per EVAL_STEPS steps costs, useful model-FLOPs
             utilisation against the matrix-multiply peak measured here, and the restoration
             metrics on the same 100 validation examples after the budget; then the ratios, this
             tool's evaluation at the default settings, and the callbacks' cost (below).
  callbacks  the DomainFocus callbacks' time per optimizer step against the step time; part of the
             train section, which `--only callbacks` runs.
  startup    (benchmarks/startup.py) time from start to the first training step, first start against
             second start with the same data (the second reuses the tokenization cache), for the demo
             data (0.6 MB), the demo data repeated to about 24 and 96 MB, and raw text with masks
             drawn while training (demo/corpus.txt repeated to about 96 MB).
  trim       (benchmarks/vocabulary.py) TRIM_VOCAB on the tiny model given a 27,000-token vocabulary:
             tokens, parameters, steps/s, tokens/s and peak memory before and after, with this tool's
             recipe.
  memory     (benchmarks/memory.py) weights, gradients, optimizer state and the planner's full
             estimate for mt5-small, mt5-base and mt5-large with each optimizer, computed from their
             configs; which mt5-base batches fit 6 GB; and LoRA's plan for mt5-base, mt5-large and
             mt5-xl.
  prepare    (benchmarks/preparation.py) prepare.py throughput (MB of Chinese text per second on one
             core) with a 20,000-term lexicon, and its peak memory for two corpus sizes: equal peaks
             show that it streams.
  knobs      (benchmarks/speed.py; only with --only knobs, about 16 minutes) the speed knobs one at a
             time against this tool's defaults, each for five times --budget: DATALOADER_WORKERS=2 and
             TORCH_COMPILE=True (with a fresh compile cache, as on a first run), giving the time to
             the first step, real tokens/s over the run and after the last compiling step; and the
             length-grouped sampler's order for one epoch from the length column as transformers
             reads it against the precomputed list this tool passes.
  order      (benchmarks/speed.py; only with --only order, about 3 minutes) this tool's recipe with
             the batches in the order transformers' length grouping gives them, and shuffled as this
             tool does.
  masking    (benchmarks/masking.py; about 12 minutes) the same small raw corpus, a 20,000-term
             lexicon, tiny model and 120 s each: masked once by prepare.py, masked once while training
             (FRESH_MASKS=False), afresh every epoch, afresh with fresh noise, and afresh in a DataLoader
             worker; epochs reached, s/step, real tokens/s (and their ratio to the prepared run),
             eval_loss and the restoration metrics on demo/corpus_valid.txt, which shares no sentence
             with the corpus; and one epoch of masks drawn from the terms kept against searching the
             lexicon at every draw.
  earlystop  (benchmarks/earlystop.py; only with --only earlystop, about 8 minutes) the demo run and a
             longer one (2,400 steps); transformers' EarlyStoppingCallback (same patience and
             threshold, no start step) and DelayedEarlyStopping replayed over each run's recorded
             evaluations: the step each stops at, and the best model kept there (eval_loss and the
             restoration metrics).
  lora       (benchmarks/lora.py) full fine-tuning against LoRA (rank 8 on q, v; rank 8 and 32 on
             every linear layer), the same tiny model, data and --budget each: trained parameters,
             steps/s, peak memory, one checkpoint's size, and train.py's evaluation.

The recipes' real tokens and FLOPs are counted by a forward pre-hook on the model (training passes
only), and a callback stops each run at its budget (benchmarks/recipes.py). Corpora and lexicons for
`prepare` are synthetic (generated from a fixed seed), so the figures are reproducible and no private
text is needed.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import (
    calibration,
    decoding,
    earlystop,
    lora,
    masking,
    memory,
    ocr,
    preparation,
    review,
    speed,
    startup,
    vocabulary,
)
from benchmarks.common import HERE, RECIPES

@dataclass(frozen=True)
class Section:
    run: Callable  # of (options, folder)
    about: str  # what it measures, for --help
    by_default: bool = True  # False: only with --only NAME


SECTIONS = {  # in the order of a full run
    "restore": Section(decoding.bench_restore, "decoding settings on a trained model (--model, else the demo's)"),
    "calibration": Section(calibration.bench_calibration, "span confidence's calibration error, before and after "
                           "a temperature fitted on the other half of validation"),
    "ocr": Section(ocr.bench_ocr, "OCR in and out: which confidence finds stains; Tesseract -> restore -> ALTO/hOCR"),
    "review": Section(review.bench_review, "the review page at 500 and 5,000 documents: file size, load time"),
    "train": Section(speed.bench_train, "three recipes: tokens/s, memory, MFU, evaluation share, restoration"),
    "callbacks": Section(speed.bench_train, "the callbacks' time per step: the train section, which prints it",
                         by_default=False),
    "startup": Section(startup.bench_startup, "start-up to the first step, first and second start, 0.6 to 96 MB"),
    "trim": Section(vocabulary.bench_trim, "TRIM_VOCAB on a 27,000-token vocabulary, before and after"),
    "memory": Section(memory.bench_memory, "planned GPU memory of mt5-small to mt5-xl, full and LoRA"),
    "prepare": Section(preparation.bench_prepare, "prepare.py's throughput and peak memory"),
    "knobs": Section(speed.bench_knobs, "DATALOADER_WORKERS, TORCH_COMPILE against the defaults (16 minutes)",
                     by_default=False),
    "order": Section(speed.bench_order, "length-grouped batches in transformers' order, and shuffled (3 minutes)",
                     by_default=False),
    "masking": Section(masking.bench_masking, "masks drawn while training against prepared, 20,000-term lexicon (12 minutes)"),
    "lora": Section(lora.bench_lora, "full fine-tuning against LoRA of two ranks and target sets"),
    "earlystop": Section(earlystop.bench_earlystop, "where plain early stopping would stop, and its model (8 minutes)",
                         by_default=False),
}


def parse_options(argv=None):
    sections = "\n".join(f"  {name:<10} {section.about}{'' if section.by_default else '  [only with --only]'}"
                         for name, section in SECTIONS.items())
    parser = argparse.ArgumentParser(description="DomainFocus benchmarks", epilog=f"sections:\n{sections}",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=tuple(SECTIONS), metavar="SECTION",
                        help="run one section (see below); without it, every section not marked [only with --only]")
    parser.add_argument("--model", help="model folder (default: the tiny T5 built from the training data)")
    parser.add_argument("--train-file", default=os.path.join(HERE, "demo", "train.jsonl"))
    parser.add_argument("--valid-file", default=os.path.join(HERE, "demo", "valid.jsonl"))
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per recipe")
    # A recipe run in a process of its own (benchmarks/common.recipe_in_child):
    parser.add_argument("--recipe", choices=tuple(RECIPES), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)  # where its measurements go
    parser.add_argument("--settings", type=json.loads, help=argparse.SUPPRESS)  # train.py constants of the run
    parser.add_argument("--batch-order", help=argparse.SUPPRESS)  # "transformers": the library's own order
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)  # with --settings: and evaluate
    return parser.parse_args(argv)


def main():
    options = parse_options()
    # The sections measure train.py and callbacks.py themselves. They are handed to them here, so
    # that the benchmarks package never imports an entry script: imports point one way.
    import callbacks
    import train

    options.train, options.callbacks = train, callbacks
    if options.recipe:
        from benchmarks.recipes import run_child

        return run_child(options)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    print(f"machine: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}\n")
    with tempfile.TemporaryDirectory() as folder:
        for name, section in SECTIONS.items():
            if options.only == name or (options.only is None and section.by_default):
                section.run(options, folder)


if __name__ == "__main__":
    main()
