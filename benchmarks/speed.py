"""Training speed: the three recipes side by side (train, with the callbacks' cost), the speed knobs
and the length-grouped sampler (knobs), and the order of length-grouped batches (order)."""

import json
import random
import tempfile
import time

from benchmarks.common import RECIPES, print_table, recipe_in_child, restoration_cells


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


def bench_train(options, folder):
    """The three recipes for --budget seconds each, each in its own process; then this tool's
    evaluation at the default settings and the DomainFocus callbacks' cost per step."""
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
    print_table(["recipe", "real tokens/s", "steps/s", "peak memory", "eval share (1 per 50 steps)", "useful MFU",
                 "span_accuracy", "char_accuracy", "exact_match"],
                [(RECIPES[recipe], f"{row['tokens/s']:.0f}", f"{row['steps/s']:.2f}", f"{row['peak memory']:.0f} MB",
                  f"{100 * row['eval share']:.1f}%", f"{100 * row['MFU']:.1f}%", *restoration_cells(results[recipe]))
                 for recipe, row in rows.items()])
    print()
    for baseline in ("original", "plain"):
        ratios = {name: rows["tool"][name] / rows[baseline][name] for name in ("tokens/s", "steps/s", "peak memory")}
        print(f"this tool / {RECIPES[baseline]}: real tokens/s x{ratios['tokens/s']:.1f}, steps/s "
              f"x{ratios['steps/s']:.1f}, peak memory x{ratios['peak memory']:.2f}")
    tool = results["tool"]
    tool_step = tool["seconds"] / tool["steps"]
    evaluation = tool["default_evaluation_seconds"]
    print(f"\nEvaluation at the default settings (eval_loss on the whole validation set, generation on "
          f"GEN_EVAL_SAMPLES=200, once per EVAL_STEPS=1000 steps): {evaluation:.1f} s per evaluation, "
          f"{100 * evaluation / (evaluation + 1000 * tool_step):.1f}% of the wall time.")
    bench_callbacks(options.callbacks, tool_step)


def bench_callbacks(callbacks, tool_step, steps=2000):
    """Time the DomainFocus callbacks (`callbacks`: the callbacks.py module) and the NaN guard's checks
    spend per optimizer step."""
    import io

    import torch
    from transformers import Seq2SeqTrainingArguments, TrainerControl, TrainerState

    with tempfile.TemporaryDirectory() as folder:
        args = Seq2SeqTrainingArguments(output_dir=folder, report_to="none", eval_steps=1000, logging_steps=100,
                                        metric_for_best_model="eval_loss", use_cpu=True)
    state, control = TrainerState(max_steps=10 ** 6), TrainerControl()
    guard = callbacks.NonFiniteGuard(10)
    timed = [callbacks.SafeDetailedProgressCallback(), callbacks.LiveProgressBar(io.StringIO()),
             callbacks.DelayedEarlyStopping(), guard, callbacks.GracefulInterrupt(quit_now=None), callbacks.ResumeCheck()]
    for callback in timed:
        callback.on_train_begin(args, state, control)
    loss, grad_norm = torch.tensor(1.5), torch.tensor(0.7)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        for callback in timed:
            callback.on_step_begin(args, state, control)
        guard.loss_seen(loss)
        guard.gradients_seen(grad_norm, scaler_skips_overflow=False)
        state.global_step = step
        for callback in timed:
            callback.on_step_end(args, state, control)
        if step % 100 == 0:
            for callback in timed:
                callback.on_log(args, state, control, logs={"loss": 1.5, "learning_rate": 1e-3})
    per_step = (time.perf_counter() - started) / steps
    print(f"\nDomainFocus callbacks: {per_step * 1e6:.0f} us per optimizer step = "
          f"{100 * per_step / tool_step:.3f}% of this tool's measured step time ({tool_step * 1e3:.0f} ms).")


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
    _, overall, steady = rows["defaults"]
    print_table(["setting", "first step", "real tokens/s over the run", "vs defaults", "real tokens/s after compiling",
                 "vs defaults"],
                [(name, f"{first:.1f} s", f"{speed:.0f}", f"x{speed / overall:.2f}",
                  *((f"{after:.0f}", f"x{after / steady:.2f}") if after and steady else ("not reached", "-")))
                 for name, (first, speed, after) in rows.items()])
    bench_sampler()


def bench_sampler(examples=120_000):
    """Length grouping: one epoch's batch order from the dataset's length column as transformers 5
    reads it (one row at a time) against the precomputed list this tool passes to the sampler."""
    import datasets
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from domainfocus.trainer import length_list

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


def bench_order(options, folder):
    """This tool's recipe twice for --budget seconds: batches in the order transformers' length
    grouping gives them (each megabatch from the longest batch to the shortest) and shuffled."""
    rows = {}
    for name, extra in (("transformers' order", ["--batch-order", "transformers"]), ("shuffled (this tool)", [])):
        rows[name] = recipe_in_child(options, folder, extra=extra)
    print(f"\nLength-grouped batch order, this tool's recipe for {options.budget:.0f} s each:\n")
    print_table(["batch order", "steps", "real tokens/s", "eval_loss", "span_accuracy", "char_accuracy", "exact_match"],
                [(name, row["steps"], f"{row['real_tokens'] / row['seconds']:.0f}", f"{row['eval_loss']:.4f}",
                  *restoration_cells(row)) for name, row in rows.items()])
