"""Benchmarks, run on this machine and printed as markdown tables, baselines side by side.

    python bench.py                      # every section but knobs and order, on the demo data and the tiny model
    python bench.py --only train         # one section: train, callbacks, startup, trim, memory, prepare, knobs, order, restore, masking, lora
    python bench.py --model FOLDER --train-file F --valid-file F --budget 300   # your model and data

Sections:
  train      three recipes on the same data, model and machine, each for the same wall-clock
             budget, each in its own process (so peak memory is its own):
               original  -- every example padded to 512 / 256 tokens, labels padded with the pad id
                            (the loss counts padding), random sampling, generation on the whole
                            validation set at every evaluation;
               plain HF  -- DataCollatorForSeq2Seq (dynamic padding, labels -100), random sampling,
                            AdamW, generation on the whole validation set;
               this tool -- train.py's recipe: the same collator, length-grouped batches from a
                            precomputed length column, its optimizer, eval_loss on the whole
                            validation set and generation on GEN_EVAL_SAMPLES examples.
             Reports real (non-padding) tokens/s, steps/s, peak memory, the share of wall time an
             evaluation schedule of one evaluation per EVAL_STEPS steps costs, useful model-FLOPs
             utilisation against the matrix-multiply peak measured here, and the restoration
             metrics on the same 100 validation examples after the budget; then the ratios.
  callbacks  the DomainFocus callbacks' time per optimizer step against the step time.
  trim       TRIM_VOCAB on the tiny model given a 27,000-token vocabulary: tokens, parameters,
             steps/s, tokens/s and peak memory before and after, with this tool's recipe.
  memory     weights, gradients, optimizer state and the planner's full estimate for mt5-small,
             mt5-base and mt5-large with each optimizer, computed from their configs.
  startup    time from start to the first training step, first start against second start with
             the same data (the second reuses the tokenization cache), for the demo data (0.6 MB)
             and the demo data repeated to about 24 and 96 MB.
  knobs      (only with --only knobs, about 16 minutes) the speed knobs one at a time against this
             tool's defaults, each for five times --budget: DATALOADER_WORKERS=2 and
             TORCH_COMPILE=True (with a fresh compile cache, as on a first run), giving the time to
             the first step, real tokens/s over the run and after the last compiling step; and the
             length-grouped sampler's order for one epoch from the length column as transformers
             reads it against the precomputed list this tool passes.
  order      (only with --only order, about 3 minutes) this tool's recipe with the batches in the
             order transformers' length grouping gives them, and shuffled as this tool does.
  restore    restoration of the validation examples by a trained model (--model, else the demo
             trained here first): greedy free-length against length-aware decoding with 1, 2, 4 and
             8 beams and with the lexicon (every term masked in the training data, alone and shuffled
             among 20,000 others); span_accuracy, char_accuracy, exact_match and spans/s; the accuracy
             of spans above and below a confidence of 0.5; and the same spans joined into
             3,000-character lines, restored in windows of whole sentences.
  masking    (about 12 minutes) the same small raw corpus, tiny model and 120 s each: masked once
             by prepare.py, masked once while training (FRESH_MASKS=False), afresh every epoch,
             afresh with fresh noise, and afresh in a DataLoader worker; epochs reached, real
             tokens/s (and its ratio to the prepared run), eval_loss and the restoration metrics on
             a fixed held-back validation set.
  lora       full fine-tuning against LoRA (rank 8 on q, v; rank 8 and 32 on every linear layer), the
             same tiny model, data and --budget each: trained parameters, steps/s, peak memory, one
             checkpoint's size, and train.py's evaluation. (The memory section adds LoRA's plan for
             mt5-base, mt5-large and mt5-xl.)
  prepare    prepare.py throughput (MB of Chinese text per second on one core) with a 20,000-term
             lexicon, and its peak memory for two corpus sizes: equal peaks show that it streams.

Corpora and lexicons for `prepare` are synthetic (generated from a fixed seed), so the figures are
reproducible and no private text is needed.
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

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


def run_prepare_alone(corpus, lexicon, out):
    """prepare.py in its own process (one core): (seconds, peak resident memory in MB)."""
    code = (
        "import time\n"
        "from bench import peak_resident_mb\n"
        "from prepare import parse_options, prepare\n"
        f"options = parse_options(['--text', {corpus!r}, '--lexicon', {lexicon!r}, '--out', {out!r}])\n"
        "start = time.perf_counter()\n"
        "prepare(options, report=lambda line: None)\n"
        "print(time.perf_counter() - start, peak_resident_mb())\n"
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


RECIPES = {"original": "original recipe", "plain": "plain Hugging Face", "tool": "this tool"}


def matmul_peak(repeats=30, size=1024):
    """This machine's matrix-multiply rate in FLOP/s (fp32 on CPU, bf16 on a GPU), measured now."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def flop_counter(model):
    """Training FLOPs of one example from its real lengths (forward + backward = 6 x multiply-adds
    of the weights, plus attention scores), following REFERENCE.md's encoder-decoder formula. The
    Trainer's own floating_point_ops ignores target tokens, so it is not used."""
    config = model.config
    embedding = config.vocab_size * config.d_model
    encoder = sum(p.numel() for n, p in model.encoder.named_parameters() if "embed_tokens" not in n)
    decoder = sum(p.numel() for n, p in model.decoder.named_parameters() if "embed_tokens" not in n)
    inner = config.num_heads * config.d_kv
    decoder_layers = config.num_decoder_layers or config.num_layers

    def flops(source, target):
        weights = 6 * (encoder * source + (decoder + embedding) * target)
        attention = 12 * inner * (config.num_layers * source ** 2 + decoder_layers * (target ** 2 + source * target))
        return weights + attention

    return flops


def run_recipe(recipe, model_folder, train_file, valid_file, budget, output_dir, settings=None, evaluate=False):
    """Train one recipe for `budget` seconds in this process; returns its measurements.

    `settings` changes train.py constants of this tool's recipe (the speed knobs, the masking);
    with it, the run only trains: its measurements are throughput, not restoration, unless
    `evaluate` asks for this tool's own evaluation of the whole validation file at the end."""
    import datasets
    import torch
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              TrainerCallback, default_data_collator, set_seed)
    from transformers.trainer_callback import PrinterCallback

    import train as tool
    from data import MaskingCollator, first_examples, load_data
    from restoration import Decoding, Restorer, from_sentinels
    from trainer import DomainFocusTrainer, training_arguments
    from spans import RESTORATION_METRICS, restoration_metrics

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_folder)
    config = {**tool.default_config(), **tool.DEMO, "TRAIN_FILE": train_file, "VALID_FILE": valid_file,
              "OUTPUT_DIR": output_dir, "MAX_INPUT_LENGTH": 512, "MAX_TARGET_LENGTH": 256}
    if recipe != "tool":
        config["OPTIMIZER"] = "adamw_torch"
    config.update(settings or {})
    args = training_arguments(config, {"fp16": False, "bf16": torch.cuda.is_available()})
    args.eval_strategy = args.save_strategy = "no"  # evaluation is timed separately below
    args.eval_steps = args.save_steps = None
    args.max_steps = 10 ** 6  # the budget callback stops training
    validation = first_examples(valid_file, "inputs", "targets", 10 ** 9)
    files = {"train": train_file, "validation": valid_file}
    if config["LORA_RANK"]:
        from modeling import attach_lora

        model = attach_lora(model, config)
    if recipe == "tool":  # prepared JSON Lines, or raw text masked while training (settings with LEXICON_FILE)
        data, _, _ = load_data(config, tokenizer, output_dir)
        collator, ignored = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100), -100
        if config["LEXICON_FILE"]:
            collator = MaskingCollator(tokenizer, collator, 512, 256)
        base = DomainFocusTrainer
        extra = {"generation_examples": validation[: config["GEN_EVAL_SAMPLES"]]}
        Decoding(num_beams=config["NUM_BEAMS"], max_input_length=512, max_new_tokens=64).save_to(model)
    else:
        padded = recipe == "original"

        def tokenize(batch):
            padding = "max_length" if padded else False
            inputs = tokenizer(batch["inputs"], max_length=512, truncation=True, padding=padding)
            labels = tokenizer(text_target=batch["targets"], max_length=256, truncation=True, padding=padding)
            return {**inputs, "labels": labels["input_ids"]}

        raw = datasets.load_dataset("json", data_files=files)
        data = {split: part.map(tokenize, batched=True, remove_columns=part.column_names) for split, part in raw.items()}
        collator = default_data_collator if padded else DataCollatorForSeq2Seq(tokenizer, model=model)
        ignored = tokenizer.pad_token_id if padded else -100
        base, extra = Seq2SeqTrainer, {}
        args.train_sampling_strategy = "random"
    count_flops = flop_counter(model)

    class Measured(base):
        real_tokens = 0
        flops = 0
        timeline = []  # (time, real tokens so far) after each forward-backward pass

        def training_step(self, model, inputs, num_items_in_batch=None):
            sources = inputs["attention_mask"].sum(dim=1).tolist()
            targets = (inputs["labels"] != ignored).sum(dim=1).tolist()
            self.real_tokens += sum(sources) + sum(targets)
            self.flops += sum(count_flops(s, t) for s, t in zip(sources, targets))
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.timeline.append((time.perf_counter(), self.real_tokens))
            return loss

    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.started
            control.should_training_stop = self.seconds >= budget

    budget_callback = Budget()
    trainer = Measured(model=model, args=args, train_dataset=data["train"], eval_dataset=data["validation"],
                       processing_class=tokenizer, data_collator=collator, callbacks=[budget_callback], **extra)
    trainer.remove_callback(PrinterCallback)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds, steps = budget_callback.seconds, trainer.state.global_step
    throughput = {"seconds": seconds, "steps": steps, "real_tokens": trainer.real_tokens, "epochs": trainer.state.epoch,
                  "first_step_seconds": trainer.timeline[0][0] - budget_callback.started, "timeline": trainer.timeline}
    if evaluate:  # this tool's evaluation (its decoding, as restore.py would) of every validation example
        trainer.generation_examples = validation
        metrics = trainer.evaluate()
        trainer._save_checkpoint(trainer.model, None)  # one checkpoint, to weigh it
        checkpoint = os.path.join(output_dir, f"checkpoint-{steps}")
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else peak_resident_mb()
        return {**throughput, **{name[5:]: value for name, value in metrics.items()
                                 if name in ("eval_loss", *RESTORATION_METRICS)}, "eval_loss": metrics["eval_loss"],
                "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "peak_mb": peak,
                "checkpoint_mb": sum(os.path.getsize(os.path.join(checkpoint, name))
                                     for name in os.listdir(checkpoint)) / 1e6}
    if settings is not None:
        return throughput
    # One evaluation in the recipe's own style: the baselines generate for the whole validation set.
    started = time.perf_counter()
    eval_loss = trainer.evaluate()["eval_loss"]
    if recipe != "tool":
        baseline_generate(model, tokenizer, [inputs for inputs, _ in validation])
    evaluation_seconds = time.perf_counter() - started
    default_evaluation_seconds = None
    if recipe == "tool":  # and once more with the default GEN_EVAL_SAMPLES
        trainer.generation_examples = validation[: tool.GEN_EVAL_SAMPLES]
        started = time.perf_counter()
        trainer.evaluate()
        default_evaluation_seconds = time.perf_counter() - started
    # The same restoration test for every recipe: the first 100 validation examples, greedy, free length.
    greedy = Restorer(model, tokenizer, Decoding(num_beams=1, length_aware=False, max_new_tokens=64))
    results = greedy.restore_documents([from_sentinels(inputs) for inputs, _ in validation[:100]])
    scores = restoration_metrics([result["prediction"] for result in results], [t for _, t in validation[:100]])
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else peak_resident_mb()
    return {"recipe": recipe, "seconds": seconds, "steps": steps, "real_tokens": trainer.real_tokens,
            "flops": trainer.flops, "evaluation_seconds": evaluation_seconds,
            "default_evaluation_seconds": default_evaluation_seconds, "peak_mb": peak, "eval_loss": eval_loss,
            "timeline": trainer.timeline, **scores}


def baseline_generate(model, tokenizer, texts, batch_size=64):
    """The baselines' own evaluation: plain greedy generation, inputs cut at 512 tokens."""
    import torch

    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=512)
            model.generate(**batch, max_new_tokens=64, num_beams=1, do_sample=False)


def tiny_model_folder(folder, train_file):
    from modeling import build_tiny_t5

    tokenizer, model = build_tiny_t5(train_file, "inputs", "targets", 42)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe_in_child(options, folder, recipe="tool", model=None, budget=None, extra=(), environment=None,
                    train_file=None, valid_file=None):
    """run_recipe in a process of its own (so peak memory is its own); returns its measurements."""
    out = os.path.join(folder, "recipe.json")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--recipe", recipe, *extra,
                    "--model", model or options.model, "--train-file", train_file or options.train_file,
                    "--valid-file", valid_file or options.valid_file, "--budget", str(budget or options.budget),
                    "--out", out],
                   check=True, cwd=HERE,
                   env={**os.environ, "HF_HOME": os.path.join(folder, "hf-home"), **(environment or {})})
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


def bench_train(options, folder):
    peak = matmul_peak()
    results = {recipe: recipe_in_child(options, folder, recipe) for recipe in RECIPES}
    eval_steps = 50  # the demo's schedule: one evaluation per 50 optimizer steps
    rows = {}
    for recipe, result in results.items():
        per_step = result["seconds"] / result["steps"]
        rows[recipe] = {
            "tokens/s": result["real_tokens"] / result["seconds"], "steps/s": result["steps"] / result["seconds"],
            "peak memory": result["peak_mb"],
            "eval share": result["evaluation_seconds"] / (result["evaluation_seconds"] + eval_steps * per_step),
            "MFU": result["flops"] / result["seconds"] / peak,
        }
    print(f"Training for {options.budget:.0f} s each on the same data and model; matrix-multiply peak "
          f"{peak / 1e9:.0f} GFLOP/s measured now.\n")
    print("| recipe | real tokens/s | steps/s | peak memory | eval share (1 per 50 steps) | useful MFU | "
          "span_accuracy | char_accuracy | exact_match |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for recipe, row in rows.items():
        result = results[recipe]
        print(f"| {RECIPES[recipe]} | {row['tokens/s']:.0f} | {row['steps/s']:.2f} | {row['peak memory']:.0f} MB | "
              f"{100 * row['eval share']:.1f}% | {100 * row['MFU']:.1f}% | {result['span_accuracy']:.3f} | "
              f"{result['char_accuracy']:.3f} | {result['exact_match']:.3f} |")
    print()
    for baseline in ("original", "plain"):
        ratios = {name: rows["tool"][name] / rows[baseline][name] for name in ("tokens/s", "steps/s", "peak memory")}
        print(f"this tool / {RECIPES[baseline]}: real tokens/s x{ratios['tokens/s']:.1f}, steps/s "
              f"x{ratios['steps/s']:.1f}, peak memory x{ratios['peak memory']:.2f}")
    tool_step = results["tool"]["seconds"] / results["tool"]["steps"]
    return tool_step, results["tool"]


KNOBS = {"defaults": {}, "DATALOADER_WORKERS=2": {"DATALOADER_WORKERS": 2},
         "TORCH_COMPILE=True": {"TORCH_COMPILE": True}}


def after_compilation(timeline):
    """Real tokens/s over the steps after the last one that took over 5x the median step (a step
    that compiled, under TORCH_COMPILE); None when fewer than 50 steps are left."""
    if len(timeline) < 50:
        return None
    durations = [later[0] - earlier[0] for earlier, later in zip(timeline, timeline[1:])]
    slow = 5 * sorted(durations)[len(durations) // 2]
    start = max((index + 1 for index, duration in enumerate(durations) if duration > slow), default=0)
    if len(timeline) - start < 50:
        return None
    return (timeline[-1][1] - timeline[start][1]) / (timeline[-1][0] - timeline[start][0])


def bench_knobs(options, folder):
    """Each speed knob against this tool's defaults: its own process, five times the --budget
    (compilation takes minutes before it can pay off), and a fresh compile cache, as on a first run."""
    budget = 5 * options.budget
    rows = {}
    for name, settings in KNOBS.items():
        result = recipe_in_child(options, folder, budget=budget, extra=["--settings", json.dumps(settings)],
                                 environment={"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(dir=folder)})
        rows[name] = (result["first_step_seconds"], result["real_tokens"] / result["seconds"],
                      after_compilation(result["timeline"]))
    print(f"\nSpeed knobs, this tool's recipe for {budget:.0f} s each:\n")
    print("| setting | first step | real tokens/s over the run | vs defaults | real tokens/s after compiling | vs defaults |")
    print("| --- | --- | --- | --- | --- | --- |")
    _, overall, steady = rows["defaults"]
    for name, row in rows.items():
        after = f"{row[2]:.0f} | x{row[2] / steady:.2f}" if row[2] and steady else "not reached | -"
        print(f"| {name} | {row[0]:.1f} s | {row[1]:.0f} | x{row[1] / overall:.2f} | {after} |")
    bench_sampler()


def bench_order(options, folder):
    """This tool's recipe twice for --budget seconds: batches in the order transformers' length
    grouping gives them (each megabatch from the longest batch to the shortest) and shuffled."""
    rows = {}
    for name, extra in (("transformers' order", ["--batch-order", "transformers"]), ("shuffled (this tool)", [])):
        rows[name] = recipe_in_child(options, folder, extra=extra)
    print(f"\nLength-grouped batch order, this tool's recipe for {options.budget:.0f} s each:\n")
    print("| batch order | steps | real tokens/s | eval_loss | span_accuracy | char_accuracy | exact_match |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['steps']} | {row['real_tokens'] / row['seconds']:.0f} | {row['eval_loss']:.4f} | "
              f"{row['span_accuracy']:.3f} | {row['char_accuracy']:.3f} | {row['exact_match']:.3f} |")


MASKING = {  # name: train.py constants (None: the same text prepared once by prepare.py)
    "prepared by prepare.py (static)": None,
    "raw text, FRESH_MASKS=False (static)": {"FRESH_MASKS": False},
    "raw text, FRESH_MASKS=True": {"FRESH_MASKS": True},
    "raw text, FRESH_MASKS=True, NOISE=0.02": {"FRESH_MASKS": True, "NOISE": 0.02},
    "raw text, FRESH_MASKS=True, DATALOADER_WORKERS=1": {"FRESH_MASKS": True, "DATALOADER_WORKERS": 1},
}


def bench_masking(options, folder, documents=1000, budget=120):
    """The same small corpus (the first `documents` sentences of demo/corpus.txt, a tenth of them
    held back by document and masked once as the fixed validation set), the same tiny model and
    the same --budget: masked once by prepare.py, masked once while training, masked afresh every
    epoch, afresh with fresh OCR-like noise, and afresh in a DataLoader worker process. Evaluated
    as train.py evaluates, on every validation example."""
    import train as tool
    from data import build_masker, mask_once, read_pieces, write_examples
    from prepare import parse_options, prepare

    work = os.path.join(folder, "masking")
    os.makedirs(work, exist_ok=True)
    lexicon = os.path.join(HERE, "demo", "lexicon.txt")
    with open(os.path.join(HERE, "demo", "corpus.txt"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()[:documents]
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    config = {**tool.default_config(), "TRAIN_FILE": corpus, "LEXICON_FILE": lexicon}
    pieces = read_pieces(corpus, config, 0.1)
    train_text, valid_file = os.path.join(work, "train.txt"), os.path.join(work, "valid.jsonl")
    with open(train_text, "w", encoding="utf-8") as handle:
        handle.write("\n".join(pieces["train"]) + "\n")
    write_examples(valid_file, mask_once(pieces["valid"], build_masker(config), "bench:valid"))
    prepared = os.path.join(work, "prepared")  # its valid.jsonl stays empty: validation is the file above
    prepare(parse_options(["--text", train_text, "--lexicon", lexicon, "--out", prepared, "--valid-ratio", "0"]),
            report=lambda line: None)
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
    print("| masks | epochs | real tokens/s | eval_loss | span_accuracy | char_accuracy | exact_match |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['epochs']:.1f} | {row['real_tokens'] / row['seconds']:.0f} | {row['eval_loss']:.4f} | "
              f"{row['span_accuracy']:.3f} | {row['char_accuracy']:.3f} | {row['exact_match']:.3f} |")
    speed = {name: row["real_tokens"] / row["seconds"] for name, row in rows.items()}
    prepared = speed["prepared by prepare.py (static)"]
    print("\nreal tokens/s against prepared JSON Lines: " + ", ".join(
        f"{name} x{value / prepared:.3f}" for name, value in speed.items() if MASKING[name]))


def bench_sampler(examples=120_000):
    """Length grouping: one epoch's batch order from the dataset's length column as transformers 5
    reads it (one row at a time) against the precomputed list this tool passes to the sampler."""
    import datasets
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from trainer import length_list

    lengths = [random.Random(index).randint(10, 500) for index in range(examples)]
    dataset = datasets.Dataset.from_dict({"length": lengths})
    timings = []
    for precomputed in (False, True):
        started = time.perf_counter()
        source = length_list(dataset) if precomputed else dataset["length"]  # this tool / the Trainer
        list(LengthGroupedSampler(32, lengths=source))
        timings.append(time.perf_counter() - started)
    print(f"\nLength-grouped order of one epoch of {examples:,} examples: {timings[0]:.1f} s reading the length "
          f"column row by row, {timings[1]:.2f} s from the precomputed list (this tool).")


def bench_callbacks(tool_step, steps=2000):
    """Time the DomainFocus callbacks (and the NaN guard's checks) spend per optimizer step."""
    import io

    import torch
    from transformers import Seq2SeqTrainingArguments, TrainerControl, TrainerState

    from callbacks import (DelayedEarlyStopping, GracefulInterrupt, LiveProgressBar, NonFiniteGuard, ResumeCheck,
                           SafeDetailedProgressCallback)

    with tempfile.TemporaryDirectory() as folder:
        args = Seq2SeqTrainingArguments(output_dir=folder, report_to="none", eval_steps=1000, logging_steps=100,
                                        metric_for_best_model="eval_loss", use_cpu=True)
    state, control = TrainerState(max_steps=10 ** 6), TrainerControl()
    guard = NonFiniteGuard(10)
    callbacks = [SafeDetailedProgressCallback(), LiveProgressBar(io.StringIO()), DelayedEarlyStopping(), guard,
                 GracefulInterrupt(quit_now=None), ResumeCheck()]
    for callback in callbacks:
        callback.on_train_begin(args, state, control)
    loss, grad_norm = torch.tensor(1.5), torch.tensor(0.7)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        for callback in callbacks:
            callback.on_step_begin(args, state, control)
        guard.loss_seen(loss)
        guard.gradients_seen(grad_norm, scaler_skips_overflow=False)
        state.global_step = step
        for callback in callbacks:
            callback.on_step_end(args, state, control)
        if step % 100 == 0:
            for callback in callbacks:
                callback.on_log(args, state, control, logs={"loss": 1.5, "learning_rate": 1e-3})
    per_step = (time.perf_counter() - started) / steps
    print(f"\nDomainFocus callbacks: {per_step * 1e6:.0f} us per optimizer step = "
          f"{100 * per_step / tool_step:.3f}% of this tool's measured step time ({tool_step * 1e3:.0f} ms).")


def bench_startup(folder, model, valid_file, copies=(1, 40, 160), raw_megabytes=96):
    """Seconds from start to the first training step: first start, then a second with the same data
    (which reuses the tokenization cache), for the demo data as it is (0.6 MB) and repeated to
    about 24 and 96 MB; and for raw text with masks drawn while training (demo/corpus.txt repeated
    to about `raw_megabytes` MB)."""
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
                 f"--TRAIN_FILE={data}", f"--VALID_FILE={valid_file}", *extra,
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


def large_vocabulary_folder(folder, train_file):
    """The tiny T5 with a vocabulary of about 27,000 tokens instead of about 650: SentencePiece also
    trained on 3 MB of synthetic Chinese, as mT5's vocabulary covers far more than one domain uses."""
    from modeling import build_tiny_t5

    _, terms = synthetic_lexicon(folder)
    corpus = synthetic_corpus(folder, 3, terms)
    tokenizer, model = build_tiny_t5(train_file, "inputs", "targets", 42, vocab_size=30000, extra_text=corpus,
                                     max_piece_length=16)
    path = os.path.join(folder, "large-vocabulary")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bench_trim(options, folder):
    """TRIM_VOCAB on a model whose vocabulary is far larger than the data needs: parameters, speed, memory."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from data import first_examples
    from modeling import model_saver, trim_vocabulary

    large = large_vocabulary_folder(folder, options.train_file)
    tokenizer, model = AutoTokenizer.from_pretrained(large), AutoModelForSeq2SeqLM.from_pretrained(large)
    counts = {"large": (len(tokenizer), model.num_parameters())}
    texts = [text for path in (options.train_file, options.valid_file)
             for pair in first_examples(path, "inputs", "targets", float("inf")) for text in pair]
    tokenizer, model = trim_vocabulary(tokenizer, model, texts, os.path.join(folder, "trim-work"))
    trimmed = os.path.join(folder, "trimmed")
    model_saver(model, tokenizer)(trimmed)
    counts["trimmed"] = (len(tokenizer), model.num_parameters())
    results = {}
    for name, path in (("large", large), ("trimmed", trimmed)):
        results[name] = recipe_in_child(options, folder, model=path, budget=options.budget / 2)
    print(f"\nTRIM_VOCAB, this tool's recipe for {options.budget / 2:.0f} s each:\n")
    print("| vocabulary | tokens | parameters | steps/s | real tokens/s | peak memory | span_accuracy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, result in results.items():
        tokens, parameters = counts[name]
        print(f"| {name} | {tokens:,} | {parameters / 1e6:.2f} M | {result['steps'] / result['seconds']:.2f} | "
              f"{result['real_tokens'] / result['seconds']:.0f} | {result['peak_mb']:.0f} MB | "
              f"{result['span_accuracy']:.3f} |")


# The published configs of Google's mT5 checkpoints (vocabulary 250,112, d_kv 64, gated GELU,
# LM head not tied to the embedding): (d_model, d_ff, layers per stack, heads).
MT5_CONFIGS = {"mt5-small": (512, 1024, 8, 6), "mt5-base": (768, 2048, 12, 12), "mt5-large": (1024, 2816, 24, 16)}


def mt5_shapes(d_model, d_ff, layers, heads, vocab_size=250112):
    """An mT5 model on the meta device (shapes only), counted as the tool counts it: the published
    checkpoints have a separate LM head, so modeling.model_shapes gives it one."""
    from transformers import MT5Config

    from modeling import model_shapes

    return model_shapes(MT5Config(vocab_size=vocab_size, d_model=d_model, d_ff=d_ff, num_layers=layers,
                                  num_heads=heads, d_kv=64), untied_head=True)


def bench_memory():
    """Training memory of the mT5 sizes per optimizer, from their configs (no download)."""
    import train as tool
    from report import gigabytes, gpu_memory, static_memory

    print("| model | parameters | optimizer | weights + gradients + optimizer state | with activations, "
          "batch 4, 512 / 256 tokens, bf16, gradient checkpointing |")
    print("| --- | --- | --- | --- | --- |")
    # TRIM_VOCAB keeps what the data uses; 33,000 tokens is an assumed size for one domain of
    # Chinese text (not measured here: no mT5 tokenizer offline), the size at which mt5-base has
    # about 250 M parameters.
    sizes = [(name, shape, 250112) for name, shape in MT5_CONFIGS.items()]
    sizes.insert(2, ("mt5-base, TRIM_VOCAB to 33,000 tokens", MT5_CONFIGS["mt5-base"], 33000))
    for name, shape, vocabulary in sizes:
        model = mt5_shapes(*shape, vocab_size=vocabulary)
        count = sum(parameter.numel() for parameter in model.parameters())
        for optimizer in ("adamw_torch", "adamw_8bit", "adafactor"):
            config = {**tool.default_config(), "OPTIMIZER": optimizer, "GRADIENT_CHECKPOINTING": True}
            static = static_memory(model, optimizer)["total"]
            print(f"| {name} | {count / 1e6:.1f} M | {optimizer} | {gigabytes(static)} | "
                  f"{gigabytes(gpu_memory(model, config)[1])} |")
    # Which mt5-base settings fit a 6 GB GPU: the plan train.py prints, for batches of these lengths.
    print("\n| mt5-base (582.4 M), Adafactor, bf16, gradient checkpointing | longest input / target tokens | "
          "planned total | fits 6 GB |")
    print("| --- | --- | --- | --- |")
    model = mt5_shapes(*MT5_CONFIGS["mt5-base"])
    for batch, accumulation, lengths in ((4, 8, (512, 256)), (2, 16, (512, 256)), (1, 32, (512, 256)),
                                         (4, 8, (256, 64)), (4, 8, (128, 32))):
        config = {**tool.default_config(), "PER_DEVICE_BATCH_SIZE": batch, "GRADIENT_ACCUMULATION_STEPS": accumulation}
        total = gpu_memory(model, config, True, lengths)[1]
        print(f"| batch {batch} × accumulation {accumulation} | {lengths[0]} / {lengths[1]} | {gigabytes(total)} | "
              f"{'yes' if total <= config['GPU_MEMORY_GB'] * 2 ** 30 else 'no'} |")


def bench_lora_memory():
    """LoRA's plan for the mT5 sizes: frozen weights in bf16, adapters with fp32 gradients and AdamW
    state, activations; for the settings train.py would run with (bf16, gradient checkpointing)."""
    import train as tool
    from report import gigabytes, gpu_memory

    configs = {**MT5_CONFIGS, "mt5-xl": (2048, 5120, 24, 32)}
    print("\n| model | LoRA | batch | longest input / target tokens | trained parameters | planned total | fits 6 GB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ("mt5-base", "mt5-large", "mt5-xl"):
        model = mt5_shapes(*configs[name])
        for rank, batch, accumulation, lengths in ((8, 4, 8, (512, 256)), (8, 1, 32, (512, 256)), (8, 4, 8, (256, 64)),
                                                   (8, 1, 32, (256, 64))):
            config = {**tool.default_config(), "LORA_RANK": rank, "OPTIMIZER": "adamw_torch",
                      "PER_DEVICE_BATCH_SIZE": batch, "GRADIENT_ACCUMULATION_STEPS": accumulation}
            parts, total = gpu_memory(model, config, True, lengths)
            trained = parts["gradients"] // 4
            print(f"| {name} | rank {rank}, all linear layers | {batch} × {accumulation} | {lengths[0]} / {lengths[1]} | "
                  f"{trained / 1e6:.1f} M | {gigabytes(total)} | {'yes' if total <= 6 * 2 ** 30 else 'no'} |")


LORA_RUNS = {  # name: train.py constants
    "full fine-tuning": {},
    "LoRA rank 8 on q, v": {"LORA_RANK": 8, "LORA_TARGET_MODULES": "q,v"},
    "LoRA rank 8 on every linear layer": {"LORA_RANK": 8},
    "LoRA rank 32 on every linear layer": {"LORA_RANK": 32},
}


def bench_lora(options, folder):
    """Full fine-tuning against LoRA of two ranks and two target sets: the same tiny model, data and
    --budget; steps/s, peak memory, the size of one checkpoint, and train.py's evaluation."""
    rows = {name: recipe_in_child(options, folder, extra=["--settings", json.dumps(settings), "--evaluate"])
            for name, settings in LORA_RUNS.items()}
    print(f"\nLoRA against full fine-tuning, this tool's recipe for {options.budget:.0f} s each:\n")
    print("| training | trained parameters | steps/s | peak memory | checkpoint | eval_loss | span_accuracy | "
          "char_accuracy | exact_match |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        print(f"| {name} | {row['trainable'] / 1e6:.2f} M | {row['steps'] / row['seconds']:.2f} | {row['peak_mb']:.0f} MB | "
              f"{row['checkpoint_mb']:.1f} MB | {row['eval_loss']:.4f} | {row['span_accuracy']:.3f} | "
              f"{row['char_accuracy']:.3f} | {row['exact_match']:.3f} |")


def trained_demo_model(folder):
    """best/ of `python train.py --demo` trained here (about 2 minutes on 2 cores)."""
    output = os.path.join(folder, "demo-run")
    subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--demo", f"--OUTPUT_DIR={output}"], check=True,
                   cwd=HERE, stdout=subprocess.DEVNULL, env={**os.environ, "HF_HOME": os.path.join(folder, "hf-home")})
    return os.path.join(output, "best")


def bench_restore(model_folder, train_file, valid_file, examples=300, threshold=0.5):
    """Decoding settings side by side on one trained model and the validation examples."""
    import re

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from data import first_examples
    from lengths import source_length
    from restoration import Decoding, Restorer, from_markers, from_sentinels, target_lengths
    from spans import normalize, parse_spans, restoration_metrics
    from windows import cut_windows

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_folder).eval()
    saved = Decoding.of_model(model)
    validation = first_examples(valid_file, "inputs", "targets", examples)
    # The lexicon prepare.py would have masked with: every term masked in the training data.
    lexicon = sorted({text for _, targets in first_examples(train_file, "inputs", "targets", 10 ** 9)
                      for text in parse_spans(targets).values() if text})
    targets = [target for _, target in validation]
    wanted = [normalize(text) for target in targets for _, text in sorted(parse_spans(target).items()) if text]
    print(f"Restoration on {len(validation)} validation examples ({len(wanted)} spans), model {model_folder}, "
          f"lexicon of {len(lexicon)} terms from the training targets:\n")
    print("| decoding | span_accuracy | char_accuracy | exact_match | spans/s |")
    print("| --- | --- | --- | --- | --- |")
    # And a large one: the same terms shuffled among 20,000 made of the training text's characters (fixed
    # seed), so that no search can win by reading the file in order.
    rng = random.Random(0)
    characters = sorted({character for term in lexicon for character in term if not character.isspace()})
    large = lexicon + ["".join(rng.choices(characters, k=rng.randint(2, 8))) for _ in range(20_000)]
    rng.shuffle(large)
    rows = [("greedy, free length", 1, False, ()), ("length-aware, greedy", 1, True, ()),
            ("length-aware, 2 beams", 2, True, ()), ("length-aware, 4 beams", 4, True, ()),
            ("length-aware, 8 beams", 8, True, ()), ("length-aware, 4 beams + lexicon", 4, True, lexicon),
            ("length-aware, 4 beams + lexicon in 20,000 terms", 4, True, large)]
    spans_by_row, cut_searches = {}, 0
    for name, beams, aware, terms in rows:
        decoding = Decoding(num_beams=beams, length_aware=aware, max_input_length=saved.max_input_length,
                            max_new_tokens=saved.max_new_tokens)
        restorer = Restorer(model, tokenizer, decoding, terms)
        documents = [from_sentinels(inputs, target_lengths(target)) for inputs, target in validation]
        started = time.perf_counter()
        results = restorer.restore_documents(documents, alternatives=3)
        seconds = time.perf_counter() - started
        scores = restoration_metrics([result["prediction"] for result in results], targets)
        spans_by_row[name] = [span for result in results for span in result["spans"]]
        print(f"| {name} | {scores['span_accuracy']:.3f} | {scores['char_accuracy']:.3f} | "
              f"{scores['exact_match']:.3f} | {len(spans_by_row[name]) / seconds:.0f} |")
        cut_searches += restorer.searches_cut
    print(f"\nSpans whose lexicon search reached its safety limit (the choice then is not proven exact): "
          f"{cut_searches}.")
    print(f"\nDoes confidence mean something? Spans of each setting split at confidence {threshold}:\n")
    print(f"| decoding | spans ≥ {threshold} | their accuracy | spans < {threshold} | their accuracy |")
    print("| --- | --- | --- | --- | --- |")
    for name, spans in spans_by_row.items():
        right = [normalize(span["text"]) == want for span, want in zip(spans, wanted)]
        high = [ok for ok, span in zip(right, spans) if span["confidence"] is not None and span["confidence"] >= threshold]
        low = [ok for ok, span in zip(right, spans) if span["confidence"] is None or span["confidence"] < threshold]
        share = lambda values: f"{sum(values) / len(values):.3f}" if values else "-"  # noqa: E731
        print(f"| {name} | {len(high)} | {share(high)} | {len(low)} | {share(low)} |")
    # Whole documents: the same examples as marker text joined, a space between them, into lines of
    # about 3,000 characters, restored with the windows the model's saved settings give.
    lines, line, truth = [], "", []
    for inputs, target in validation:
        spans = parse_spans(target)
        line += (" " if line else "") + re.sub(r"<extra_id_(\d+)>", lambda match: "□" * source_length(
            spans.get(int(match.group(1)), "")), inputs)
        truth += [normalize(text) for _, text in sorted(spans.items()) if text]
        if len(line) >= 3000:
            lines, line = lines + [line], ""
    lines += [line] if line else []
    decoding = Decoding(num_beams=4, max_input_length=saved.max_input_length, max_new_tokens=saved.max_new_tokens,
                        whole_tokens=saved.whole_tokens, window_tokens=saved.window_tokens)
    restorer = Restorer(model, tokenizer, decoding)
    windows = [window for text in lines for window in cut_windows(from_markers(text), tokenizer, decoding)]
    joined = [span for result in restorer.restore(lines) for span in result["spans"]]
    separate = spans_by_row["length-aware, 4 beams"]
    exact_lengths = all(source_length(span["text"]) == part.length for span, part in
                        zip(joined, [part for text in lines for part in from_markers(text).spans]) if span["text"])
    sizes = sorted(len(tokenizer(window.text)["input_ids"]) for window in windows)
    print(f"\nThe same spans as {len(lines)} lines of about 3,000 characters, restored in {len(windows)} windows of "
          f"whole sentences (window_tokens={saved.window_tokens}, whole_tokens={saved.whole_tokens}; median window "
          f"{sizes[len(sizes) // 2]} tokens, largest {sizes[-1]}; length-aware, 4 beams): span_accuracy "
          f"{sum(normalize(span['text']) == want for span, want in zip(joined, truth)) / len(truth):.3f} against "
          f"{sum(normalize(span['text']) == want for span, want in zip(separate, wanted)) / len(wanted):.3f} one "
          f"example at a time; {sum(span['confidence'] is None for span in joined)} of {len(joined)} left marked; "
          f"every restored span of exactly its length: {exact_lengths}.")

def main():
    parser = argparse.ArgumentParser(description="DomainFocus benchmarks")
    parser.add_argument("--only", choices=("train", "callbacks", "startup", "trim", "memory", "prepare", "knobs",
                                           "order", "restore", "masking", "lora"),
                        help="run one section (knobs and order run only when named: about 16 and 3 minutes)")
    parser.add_argument("--model", help="model folder (default: the tiny T5 built from the training data)")
    parser.add_argument("--train-file", default=os.path.join(HERE, "demo", "train.jsonl"))
    parser.add_argument("--valid-file", default=os.path.join(HERE, "demo", "valid.jsonl"))
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per recipe")
    parser.add_argument("--recipe", choices=tuple(RECIPES), help=argparse.SUPPRESS)  # one recipe, in a child
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=json.loads, help=argparse.SUPPRESS)  # constants for a knob run
    parser.add_argument("--batch-order", help=argparse.SUPPRESS)  # "transformers": the library's own order
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)  # with --settings: and evaluate
    options = parser.parse_args()
    if options.recipe:
        if options.batch_order == "transformers":
            import trainer

            trainer.shuffled_batch_order = lambda indices, batch_size, generator=None: indices
        with tempfile.TemporaryDirectory() as folder:
            result = run_recipe(options.recipe, options.model, options.train_file, options.valid_file,
                                options.budget, folder, options.settings, options.evaluate)
        with open(options.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
        return
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    print(f"machine: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}\n")
    with tempfile.TemporaryDirectory() as folder:
        if options.only in (None, "restore"):  # a trained model: yours, or the demo trained here
            print()
            bench_restore(options.model or trained_demo_model(folder), options.train_file, options.valid_file)
        if options.only not in ("memory", "prepare", "restore", "masking"):  # the sections that train need a model folder
            options.model = options.model or tiny_model_folder(os.path.join(folder, "model"), options.train_file)
        if options.only in (None, "train", "callbacks"):
            tool_step, tool = bench_train(options, folder)
            evaluation = tool["default_evaluation_seconds"]
            print(f"\nEvaluation at the default settings (eval_loss on the whole validation set, generation on "
                  f"GEN_EVAL_SAMPLES=200, once per EVAL_STEPS=1000 steps): {evaluation:.1f} s per evaluation, "
                  f"{100 * evaluation / (evaluation + 1000 * tool_step):.1f}% of the wall time.")
            bench_callbacks(tool_step)
        if options.only in (None, "startup"):
            bench_startup(folder, options.model, options.valid_file)
        if options.only in (None, "trim"):
            bench_trim(options, folder)
        if options.only in (None, "memory"):
            print()
            bench_memory()
            bench_lora_memory()
        if options.only in (None, "prepare"):
            print()
            bench_prepare()
        if options.only == "knobs":
            bench_knobs(options, folder)
        if options.only == "order":
            bench_order(options, folder)
        if options.only in (None, "masking"):
            bench_masking(options, folder)
        if options.only in (None, "lora"):
            bench_lora(options, folder)


if __name__ == "__main__":
    main()
