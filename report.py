"""What users see of a run: the console and train.log, the training curves, the plan before a
run, the model card, the closing summary.

* progress lines go to the console and, on the main process, to OUTPUT_DIR/train.log.
* training_curves.png is drawn from metrics.jsonl (the single record of a run) at every
  evaluation; `python train.py --plot OUTPUT_DIR` redraws it without training.
* `python train.py --check` prints the plan: data, schedule, early stopping, memory, outputs.
* best/README.md is the model card of the best model.
"""

import json
import logging
import math
import os
import platform
import shlex
import signal
import sys

from settings import lora_targets
from spans import RESTORATION_METRICS

logger = logging.getLogger("domainfocus")


def is_main_process():
    return int(os.environ.get("RANK", "0")) == 0  # torchrun and accelerate set RANK; rank 0 writes


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


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json_atomically(path, payload):
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
    os.replace(temporary, path)


def read_metrics(path):
    """{key: {step: value}} from metrics.jsonl; for a step logged twice (a resumed run), the last wins."""
    series = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            for key, value in record.items():
                if key not in ("step", "epoch", "time") and isinstance(value, (int, float)):
                    series.setdefault(key, {})[record["step"]] = value
    return series


def best_step(series, metric, greater_is_better):
    finite = {step: value for step, value in series.get(metric, {}).items() if math.isfinite(value)}
    if not finite:
        return None
    pick = max if greater_is_better else min
    return pick(finite, key=lambda step: (finite[step], -step) if greater_is_better else (finite[step], step))


def plot_run(output_dir, early_stopping_start_step=None, metric="eval_loss"):
    """Draw training_curves.png for `output_dir`; returns its path. Written atomically."""
    import matplotlib.pyplot as plt

    figure = draw_curves(read_metrics(os.path.join(output_dir, "metrics.jsonl")), early_stopping_start_step, metric)
    figure.suptitle(f"DomainFocus training: {os.path.basename(os.path.abspath(output_dir))}")
    path = os.path.join(output_dir, "training_curves.png")
    figure.savefig(path + ".tmp.png", dpi=100)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)
    return path


def draw_curves(series, early_stopping_start_step=None, metric="eval_loss"):
    """The figure of training_curves.png from {key: {step: value}}: losses, restoration metrics,
    learning rate. The x-axis spans the steps logged; an early-stopping start beyond them is
    written in the legend rather than drawn far to the right. The loss axis is logarithmic, so a
    first loss of 30 (from scratch) does not flatten the changes of 0.01 that matter later."""
    import matplotlib

    matplotlib.use("Agg")  # file only: no display needed on servers or under nohup
    import matplotlib.pyplot as plt

    restoration = [name for name in RESTORATION_METRICS if name in series]
    panels = 3 if restoration else 2
    figure, axes = plt.subplots(panels, 1, figsize=(9, 3.2 * panels), sharex=True, constrained_layout=True)
    loss_axis, rate_axis = axes[0], axes[-1]
    for key, label in (("loss", "training loss"), ("eval_loss", "evaluation loss")):
        if key in series:
            steps = sorted(series[key])
            loss_axis.plot(steps, [series[key][step] for step in steps], label=label,
                           marker="o" if key == "eval_loss" else None, markersize=3)
    losses = [value for key in ("loss", "eval_loss") for value in series.get(key, {}).values()]
    if losses and all(math.isfinite(value) and value > 0 for value in losses):
        loss_axis.set_yscale("log")
    loss_axis.set_ylabel("loss")
    if restoration:
        for key in restoration:
            steps = sorted(series[key])
            axes[1].plot(steps, [series[key][step] for step in steps], marker="o", markersize=3,
                         label=key[len("eval_"):].replace("_", " "))
        axes[1].set_ylabel("restoration (0-1)")
        axes[1].set_ylim(-0.02, 1.02)
    if "learning_rate" in series:
        steps = sorted(series["learning_rate"])
        rate_axis.plot(steps, [series["learning_rate"][step] for step in steps], color="gray",
                       label="learning rate")
    rate_axis.set_ylabel("learning rate")
    rate_axis.set_xlabel("optimizer step")
    logged = [step for values in series.values() for step in values]
    last = max(logged, default=0)
    best = best_step(series, metric, metric != "eval_loss")
    for axis in axes:
        if early_stopping_start_step and early_stopping_start_step <= last:
            axis.axvline(early_stopping_start_step, color="tab:red", linestyle="--", label="early stopping starts")
        elif early_stopping_start_step:
            axis.plot([], [], color="tab:red", linestyle="--",
                      label=f"early stopping starts at step {early_stopping_start_step} (not reached)")
        if best is not None:
            axis.axvline(best, color="tab:green", linestyle=":", label=f"best ({metric} at step {best})")
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize="small")
    if logged:
        first = min(logged)
        margin = max((last - first) * 0.02, 1)
        rate_axis.set_xlim(first - margin, last + margin)  # shared by every panel
    return figure


def optimizer_state_bytes(model, optimizer, shapes=None):
    """Bytes of optimizer state, exactly as torch and transformers allocate it after the first step,
    for the model's trainable parameters or, with LoRA, for the adapter matrices `shapes`.

    AdamW keeps two fp32 moments and a 4-byte step counter per tensor. Adafactor (no momentum)
    keeps a factored second moment, one value per row and per column, for matrices, and a 4-byte
    running RMS per tensor. 8-bit AdamW
    keeps two 1-byte moments, except for embeddings, which the Trainer keeps in 32 bits."""
    import torch

    embeddings = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    if shapes is None:
        shapes = [(tuple(p.shape), id(p) in embeddings) for p in model.parameters() if p.requires_grad]
    else:
        shapes = [(shape, False) for shape in shapes]
    total = 0
    for shape, embedding in shapes:
        count = math.prod(shape)
        if optimizer == "adamw_torch" or (optimizer == "adamw_8bit" and embedding):
            total += 8 * count + 4
        elif optimizer == "adamw_8bit":
            total += 2 * count + 4
        elif len(shape) >= 2:  # Adafactor: factored second moment, plus its RMS as a 4-byte tensor
            total += 4 * (math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]) + 4
        else:
            total += 4 * count + 4
    return total


def adapter_shapes(model, rank, targets):
    """The two LoRA matrices, (rank, inputs) and (outputs, rank), of every linear layer named in `targets`."""
    import torch

    shapes = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            shapes += [(rank, module.in_features), (module.out_features, rank)]
    return shapes


def static_memory(model, optimizer, lora_rank=0, lora_targets=(), half=False):
    """{weights, gradients, optimizer state, total} in bytes: fp32 master weights and gradients,
    as the Trainer keeps them in fp32, bf16 and fp16 alike. Activations are not included.
    With LoRA (`lora_rank` > 0) the model's own weights are frozen, in bf16 when `half` (as
    train.py loads them then), and only the adapters have fp32 gradients and optimizer state."""
    if lora_rank:
        shapes = adapter_shapes(model, lora_rank, lora_targets)
        adapters = 4 * sum(math.prod(shape) for shape in shapes)
        frozen = (2 if half else 4) * sum(parameter.numel() for parameter in model.parameters())
        state = optimizer_state_bytes(model, optimizer, shapes)
        return {"weights": frozen + adapters, "gradients": adapters, "optimizer state": state,
                "total": frozen + 2 * adapters + state}
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    weights = sum(4 * parameter.numel() for parameter in parameters)
    state = optimizer_state_bytes(model, optimizer)
    return {"weights": weights, "gradients": weights, "optimizer state": state, "total": 2 * weights + state}


def planned_state(model, config, half):
    """static_memory for the OPTIMIZER and LoRA settings of `config`."""
    return static_memory(model, config["OPTIMIZER"], config["LORA_RANK"], lora_targets(config), half)


def activation_bytes(model_config, batch, source, target, half, checkpointing):
    """An estimate of the activations one batch keeps for the backward pass (T5 / mT5 layout).

    Counted per layer from the tensors autograd saves: norms, attention projections and scores,
    feed-forward (gated in mT5) outputs, cross-attention keys and values; plus the fp32 logits over
    the whole vocabulary with their log-softmax and gradient, which dominate for mT5's 250 k
    tokens. With gradient checkpointing a layer keeps only its input, and one layer at a time is
    recomputed in full."""
    d, heads = model_config.d_model, model_config.num_heads
    inner, d_ff = heads * model_config.d_kv, model_config.d_ff
    ffn = (3 if getattr(model_config, "is_gated_act", False) else 2) * d_ff
    encoder_layer = source * (4 * d + 4 * inner + ffn) + 2 * heads * source * source
    decoder_layer = (target * (6 * d + 8 * inner + ffn) + 2 * inner * source
                     + 2 * heads * (target * target + target * source))
    encoder_layers, decoder_layers = model_config.num_layers, model_config.num_decoder_layers
    if checkpointing:
        layers = encoder_layers * source * d + decoder_layers * target * d + max(encoder_layer, decoder_layer)
    else:
        layers = encoder_layers * encoder_layer + decoder_layers * decoder_layer
    logits = 3 * target * model_config.vocab_size
    return batch * (layers * (2 if half else 4) + 4 * logits)


CUDA_CONTEXT = int(0.8 * 2 ** 30)  # the CUDA context and allocator reserve: several hundred MB to over 1 GB


def gpu_memory(model, config, half=True, lengths=None):
    """{part: bytes} for one training step on a GPU with these settings, and the total.

    `lengths` = (longest input, longest target) in the data; batches are padded only to their own
    longest example, so the peak comes from the longest ones, never beyond the limits."""
    source, target = lengths or (config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"])
    source, target = min(source, config["MAX_INPUT_LENGTH"]), min(target, config["MAX_TARGET_LENGTH"])
    parts = dict(planned_state(model, config, half))
    parts.pop("total")
    parts["activations"] = activation_bytes(model.config, config["PER_DEVICE_BATCH_SIZE"], source, target, half,
                                            config["GRADIENT_CHECKPOINTING"])
    parts["CUDA context"] = CUDA_CONTEXT
    return parts, sum(parts.values())


def memory_plan(model, config, half=True, lengths=None):
    """(lines, fits): the GPU memory estimate against GPU_MEMORY_GB and, when it does not fit, the
    single changes that would make it fit."""
    budget = config["GPU_MEMORY_GB"] * 2 ** 30
    parts, total = gpu_memory(model, config, half, lengths)
    toggled = gpu_memory(model, {**config, "GRADIENT_CHECKPOINTING": not config["GRADIENT_CHECKPOINTING"]}, half,
                         lengths)[0]
    without = toggled["activations"]
    longest = "" if lengths is None else f" for batches of the longest examples ({lengths[0]} / {lengths[1]} tokens)"
    lines = [f"GPU memory estimate{longest}: {gigabytes(total)} of GPU_MEMORY_GB={config['GPU_MEMORY_GB']:g} "
             f"({', '.join(f'{name} {gigabytes(size)}' for name, size in parts.items())}; activations "
             f"{'without' if config['GRADIENT_CHECKPOINTING'] else 'with'} gradient checkpointing would be "
             f"{gigabytes(without)})"]
    if total <= budget:
        return lines, True
    batch, accumulation = config["PER_DEVICE_BATCH_SIZE"], config["GRADIENT_ACCUMULATION_STEPS"]
    changes = [{"GRADIENT_CHECKPOINTING": True}, {"OPTIMIZER": "adafactor"},
               {"PER_DEVICE_BATCH_SIZE": max(batch // 2, 1), "GRADIENT_ACCUMULATION_STEPS": accumulation * 2},
               {"PER_DEVICE_BATCH_SIZE": 1, "GRADIENT_ACCUMULATION_STEPS": batch * accumulation},
               {"MAX_INPUT_LENGTH": config["MAX_INPUT_LENGTH"] // 2, "MAX_TARGET_LENGTH": config["MAX_TARGET_LENGTH"] // 2}]
    fitting = []
    for change in changes:
        if any(config[name] == value for name, value in change.items()):
            continue
        changed_total = gpu_memory(model, {**config, **change}, half, lengths)[1]
        if changed_total <= budget:
            fitting.append(" ".join(f"--{name}={value}" for name, value in change.items())
                           + f" ({gigabytes(changed_total)})")
    lines.append(f"It will not fit in {config['GPU_MEMORY_GB']:g} GB. " + (
        "Changes that fit: " + "; ".join(fitting) if fitting else
        "No single change fits; combine them, choose a smaller model, or raise GPU_MEMORY_GB if your GPU is larger."))
    return lines, False


def plan_record(model, config, half, lengths, world_size):
    """The memory plan as one JSON-ready object (the last line of --check), in bytes."""
    parts, total = gpu_memory(model, config, half, lengths)
    budget = int(config["GPU_MEMORY_GB"] * 2 ** 30)
    return {"parameters": sum(parameter.numel() for parameter in model.parameters()),
            "weights_bytes": parts["weights"], "gradients_bytes": parts["gradients"],
            "optimizer_state_bytes": parts["optimizer state"], "activations_bytes": parts["activations"],
            "cuda_context_bytes": parts["CUDA context"], "total_bytes": total, "gpu_memory_bytes": budget,
            "fits": total <= budget,
            "effective_batch_size": config["PER_DEVICE_BATCH_SIZE"] * config["GRADIENT_ACCUMULATION_STEPS"] * world_size}


def masking_record(config, train_counts):
    """How the training examples are masked, for --check. Raw text: measured on examples masked as
    in epoch 0; prepared JSON Lines: from the stats.json prepare.py wrote beside TRAIN_FILE, if any."""
    from data import masking_mode

    record = {"masking": masking_mode(config), "examples_per_epoch": train_counts["examples"]}
    if record["masking"] == "prepared":
        stats_file = os.path.join(os.path.dirname(config["TRAIN_FILE"]), "stats.json")
        stats = {}
        if os.path.isfile(stats_file):
            with open(stats_file, encoding="utf-8") as handle:
                stats = json.load(handle)
        return {**record, "expected_mask_rate": stats.get("mask_rate"), "term_span_share": stats.get("term_span_share"),
                "lexicon_coverage": stats.get("lexicon_coverage"), "lexicon_terms": stats.get("lexicon_terms")}
    return {**record, "expected_mask_rate": train_counts["mask_rate"], "term_span_share": train_counts["term_span_share"],
            "lexicon_coverage": train_counts["lexicon_coverage"], "lexicon_terms": train_counts["lexicon_terms"],
            "masking_sample": train_counts["sampled_examples"]}


def masking_text(record):
    """The --check line for masking_record."""
    if record["masking"] == "prepared":
        if record["expected_mask_rate"] is None:
            return ("  masking    prepared JSON Lines, the same masks every epoch (no stats.json from prepare.py beside "
                    "TRAIN_FILE: mask rate and lexicon coverage unknown)")
        source = "the same masks every epoch, from prepare.py's stats.json"
    else:
        source = (f"drawn while training, {'new every epoch' if record['masking'] == 'fresh' else 'the same every epoch'}"
                  f", measured on {record['masking_sample']:,} examples")
    return (f"  masking    {source}: {record['expected_mask_rate']:.1%} of the maskable characters masked, "
            f"{record['term_span_share']:.1%} of the spans are lexicon terms, {record['lexicon_coverage']:.1%} of the "
            f"{record['lexicon_terms']:,} lexicon terms occur; {record['examples_per_epoch']:,} examples per epoch")


def schedule(train_examples, config, world_size=1):
    """Optimizer steps per epoch and in total, evaluations, saves, and the first step at which
    early stopping could stop the run."""
    batches = math.ceil(train_examples / (config["PER_DEVICE_BATCH_SIZE"] * world_size))
    steps_per_epoch = max(math.ceil(batches / config["GRADIENT_ACCUMULATION_STEPS"]), 1)
    total = config["MAX_STEPS"] if config["MAX_STEPS"] > 0 else math.ceil(config["NUM_EPOCHS"] * steps_per_epoch)
    every = config["EVAL_STEPS"]
    first_counted = math.ceil(config["EARLY_STOPPING_START_STEP"] / every) * every
    earliest_stop = first_counted + config["EARLY_STOPPING_PATIENCE"] * every
    return {"steps_per_epoch": steps_per_epoch, "total_steps": total, "evaluations": total // every,
            "saves": total // config["SAVE_STEPS"],
            "earliest_early_stop": earliest_stop if earliest_stop <= total else None}


def gigabytes(count):
    return f"{count / 2**30:.2f} GB" if count >= 2**28 else f"{count / 2**20:.1f} MB"


def plan_text(config, counts, plan, memory, checkpoint, world_size=1):
    lines = ["Plan (nothing is trained or written by --check):"]
    for split, count in counts.items():
        lines.append(f"  {split:<10} {count['examples']:,} examples, {count['input_tokens']:,} input and "
                     f"{count['target_tokens']:,} target tokens; truncated: {count['inputs_truncated']:,} inputs, "
                     f"{count['targets_truncated']:,} targets")
    lines += [
        f"  schedule   {plan['steps_per_epoch']:,} optimizer steps per epoch, {plan['total_steps']:,} in total "
        f"(effective batch {config['PER_DEVICE_BATCH_SIZE'] * config['GRADIENT_ACCUMULATION_STEPS'] * world_size}"
        f"{f' over {world_size} processes' if world_size > 1 else ''})",
        f"  evaluation {plan['evaluations']:,} evaluations (every {config['EVAL_STEPS']} steps), "
        f"{plan['saves']:,} checkpoints (every {config['SAVE_STEPS']} steps)",
        "  early stop " + (f"can first stop the run at step {plan['earliest_early_stop']:,} (counting from step "
                           f"{config['EARLY_STOPPING_START_STEP']:,}, patience {config['EARLY_STOPPING_PATIENCE']})"
                           if plan["earliest_early_stop"] else
                           "cannot act within this schedule (start step + patience lie beyond its end)"),
    ]
    if memory:
        lines.append(f"  memory     {gigabytes(memory['total'])} for weights, gradients and {config['OPTIMIZER']} "
                     f"state ({', '.join(f'{name} {gigabytes(size)}' for name, size in memory.items() if name != 'total')}); "
                     "activations come on top")
    lines.append(f"  outputs    {config['OUTPUT_DIR']} " + (f"(resuming from {checkpoint})" if checkpoint else "(fresh run)"))
    return "\n".join(lines)


def model_card(config, counts, step, metrics):
    """best/README.md: what the model is, how it was trained, how well it restores, how to use it."""
    examples = "\n".join(f"| {split} | {count['examples']:,} | {count['input_tokens'] + count['target_tokens']:,} | "
                         f"{count['inputs_truncated']:,} | {count['targets_truncated']:,} |"
                         for split, count in counts.items())
    results = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.items()
                         if isinstance(value, float) and not name.endswith(("_runtime", "_per_second")))
    settings = "\n".join(f"| `{name}` | `{config[name]}` |" for name in (
        "MAX_INPUT_LENGTH", "MAX_TARGET_LENGTH", "PER_DEVICE_BATCH_SIZE", "GRADIENT_ACCUMULATION_STEPS",
        "OPTIMIZER", "LEARNING_RATE", "PRECISION", "EARLY_STOPPING_START_STEP", "EARLY_STOPPING_PATIENCE",
        "EARLY_STOPPING_THRESHOLD", "METRIC_FOR_BEST_MODEL", "SEED"))
    metric = config["METRIC_FOR_BEST_MODEL"]
    metric = metric if metric.startswith("eval_") else "eval_" + metric
    masking = (f" (raw text, masked while training with the terms of `{config['LEXICON_FILE']}`, "
               f"{'afresh every epoch' if config['FRESH_MASKS'] else 'the same masks every epoch'})"
               if config["LEXICON_FILE"] else "")
    method = (f"LoRA rank {config['LORA_RANK']} on `{config['LORA_TARGET_MODULES']}`, merged into these weights (the "
              "adapter alone is in `adapter/`)" if config["LORA_RANK"] else "full fine-tuning")
    validation = (f"`{config['VALID_FILE']}`" if config["VALID_FILE"] else
                  f"`validation.jsonl` ({config['VALID_RATIO']:.0%} of the documents, held out and masked once)")
    return f"""# DomainFocus restoration model

A T5-family model fine-tuned by DomainFocus Trainer to restore masked or damaged domain terms
(T5 span-corruption format: each `<extra_id_k>` in the input is a lost span).

* Base model: `{config['MODEL_NAME_OR_PATH']}`
* Best evaluation: **{metric} {metrics.get(metric, float('nan')):.4f} at step {step}** (the weights in this folder)
* Training: {method}
* Training data: `{config['TRAIN_FILE']}`{masking}, validation data: {validation}

## Evaluation at step {step}

| metric | value |
| --- | --- |
{results}

span_accuracy is the term restoration rate (restored spans equal to their target); the
restoration metrics come from greedy generation on the first {config['GEN_EVAL_SAMPLES']} validation examples.

## Data

| split | examples | tokens | inputs truncated | targets truncated |
| --- | --- | --- | --- | --- |
{examples}

## Settings

| constant | value |
| --- | --- |
{settings}

## Use

```bash
python restore.py --model THIS_FOLDER --input damaged.txt --output restored.jsonl
```

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")
model = AutoModelForSeq2SeqLM.from_pretrained("THIS_FOLDER")
batch = tokenizer(["患者因<extra_id_0>入院。"], return_tensors="pt")
print(tokenizer.decode(model.generate(**batch, max_new_tokens=32)[0], skip_special_tokens=False))
```

Trained locally; the training data never left the machine.
"""


def run_record(config, flags, checkpoint, counts, world_size):
    """run_config.json: every constant, the effective batch, data counts and library versions."""
    import datasets
    import torch
    import transformers

    return {
        "constants": config,
        "flags": sorted(flags),
        "resumed_from": checkpoint,
        "effective_batch_size": config["PER_DEVICE_BATCH_SIZE"] * config["GRADIENT_ACCUMULATION_STEPS"] * world_size,
        "examples": counts,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "datasets": datasets.__version__},
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def summarize(trainer, early_stopping, interrupt, output_dir, start_step, saved_latest, seconds, diverged=None,
              truncated=0, lengths=(None, None)):
    """The closing lines of every run: what happened, where everything is, how to go on. `truncated`:
    raw-text examples cut to the token limits `lengths` (input, target) in this run."""
    state = trainer.state
    if diverged:
        reason = diverged
    elif interrupt.signal_number:
        reason = f"interrupted by {signal.Signals(interrupt.signal_number).name}"
    elif early_stopping.stop_reason:
        reason = early_stopping.stop_reason
    else:
        reason = f"finished the schedule ({state.max_steps} steps)"
    steps = state.global_step - start_step
    logger.info("Summary: %d step%s this run (%d in total) in %s; stopped: %s.", steps, "" if steps == 1 else "s",
                state.global_step, format_duration(seconds), reason)
    if state.best_global_step:
        logger.info("Best %s %.4f at step %d -> %s", trainer.args.metric_for_best_model, state.best_metric,
                    state.best_global_step, os.path.join(output_dir, "best"))
    else:
        logger.info("No evaluation has run yet, so there is no best/ model; latest/ holds the current weights.")
    if saved_latest:
        logger.info("Latest weights (step %d) -> %s", state.global_step, os.path.join(output_dir, "latest"))
    if truncated:
        logger.warning("%d masked training examples of this run were truncated to MAX_INPUT_LENGTH=%d or "
                       "MAX_TARGET_LENGTH=%d tokens; raise the limits or lower MAX_CHARS to keep them whole.", truncated,
                       *lengths)
    logger.info("Curves: %s; checkpoints, metrics.jsonl, train.log and run_config.json are in %s.",
                os.path.join(output_dir, "training_curves.png"), output_dir)
    launcher = ["python"] if trainer.args.world_size == 1 else ["torchrun", f"--nproc_per_node={trainer.args.world_size}"]
    logger.info("Resume: %s", shlex.join([*launcher, "train.py", *sys.argv[1:]]))
    if state.best_global_step:
        logger.info("Use: python restore.py --model %s --input damaged.txt --output restored.jsonl",
                    shlex.quote(os.path.join(output_dir, "best")))


def report_memory(model, config, counts, precision_flags):
    longest = (counts["train"]["longest_input"], counts["train"]["longest_target"])
    lines, fits = memory_plan(model, config, precision_flags["bf16"] or precision_flags["fp16"], longest)
    logger.info(lines[0])
    if not fits:
        logger.warning(lines[1])
