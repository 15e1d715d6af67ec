"""What users see of a run: the training curves, the plan before a run, the model card.

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

from spans import RESTORATION_METRICS

logger = logging.getLogger("domainfocus")



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
    import matplotlib

    matplotlib.use("Agg")  # file only: no display needed on servers or under nohup
    import matplotlib.pyplot as plt

    series = read_metrics(os.path.join(output_dir, "metrics.jsonl"))
    restoration = [name for name in RESTORATION_METRICS if name in series]
    panels = 3 if restoration else 2
    figure, axes = plt.subplots(panels, 1, figsize=(9, 3.2 * panels), sharex=True, constrained_layout=True)
    loss_axis, rate_axis = axes[0], axes[-1]
    for key, label in (("loss", "training loss"), ("eval_loss", "evaluation loss")):
        if key in series:
            steps = sorted(series[key])
            loss_axis.plot(steps, [series[key][step] for step in steps], label=label,
                           marker="o" if key == "eval_loss" else None, markersize=3)
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
    best = best_step(series, metric, metric != "eval_loss")
    for axis in axes:
        if early_stopping_start_step:
            axis.axvline(early_stopping_start_step, color="tab:red", linestyle="--",
                         label="early stopping starts")
        if best is not None:
            axis.axvline(best, color="tab:green", linestyle=":", label=f"best ({metric} at step {best})")
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize="small")
    figure.suptitle(f"DomainFocus training: {os.path.basename(os.path.abspath(output_dir))}")
    path = os.path.join(output_dir, "training_curves.png")
    figure.savefig(path + ".tmp.png", dpi=100)
    plt.close(figure)
    os.replace(path + ".tmp.png", path)
    return path


def optimizer_state_bytes(parameters, optimizer):
    """Bytes of optimizer state in fp32: AdamW keeps two moments; Adafactor, without momentum,
    keeps a factored second moment (one value per row and per column) for matrices."""
    total = 0
    for parameter in parameters:
        if optimizer.startswith("adamw"):
            total += 8 * parameter.numel()
        elif parameter.dim() >= 2:
            rows = math.prod(parameter.shape[:-1])
            columns = math.prod(parameter.shape[:-2]) * parameter.shape[-1]
            total += 4 * (rows + columns)
        else:
            total += 4 * parameter.numel()
    return total


def static_memory(model, optimizer):
    """{weights, gradients, optimizer state, total} in bytes: fp32 master weights and gradients,
    as the Trainer keeps them in fp32, bf16 and fp16 alike. Activations are not included."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    weights = sum(4 * parameter.numel() for parameter in parameters)
    state = optimizer_state_bytes(parameters, optimizer)
    return {"weights": weights, "gradients": weights, "optimizer state": state, "total": 2 * weights + state}


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


def plan_text(config, counts, plan, memory, checkpoint):
    lines = ["Plan (nothing is trained or written by --check):"]
    for split, count in counts.items():
        lines.append(f"  {split:<10} {count['examples']:,} examples, {count['input_tokens']:,} input and "
                     f"{count['target_tokens']:,} target tokens; truncated: {count['inputs_truncated']:,} inputs, "
                     f"{count['targets_truncated']:,} targets")
    lines += [
        f"  schedule   {plan['steps_per_epoch']:,} optimizer steps per epoch, {plan['total_steps']:,} in total "
        f"(effective batch {config['PER_DEVICE_BATCH_SIZE'] * config['GRADIENT_ACCUMULATION_STEPS']})",
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
    return f"""# DomainFocus restoration model

A T5-family model fine-tuned by DomainFocus Trainer to restore masked or damaged domain terms
(T5 span-corruption format: each `<extra_id_k>` in the input is a lost span).

* Base model: `{config['MODEL_NAME_OR_PATH']}`
* Best evaluation: **{metric} {metrics.get(metric, float('nan')):.4f} at step {step}** (the weights in this folder)
* Training data: `{config['TRAIN_FILE']}`, validation data: `{config['VALID_FILE']}`

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


def summarize(trainer, early_stopping, interrupt, output_dir, start_step, saved_latest, seconds):
    """The closing lines of every run: what happened, where everything is, how to go on."""
    from callbacks import format_duration

    state = trainer.state
    if interrupt.signal_number:
        reason = f"interrupted by {signal.Signals(interrupt.signal_number).name}"
    elif early_stopping.stop_reason:
        reason = early_stopping.stop_reason
    else:
        reason = f"finished the schedule ({state.max_steps} steps)"
    logger.info("Summary: %d steps this run (%d in total) in %s; stopped: %s.", state.global_step - start_step,
                state.global_step, format_duration(seconds), reason)
    if state.best_global_step:
        logger.info("Best %s %.4f at step %d -> %s", trainer.args.metric_for_best_model, state.best_metric,
                    state.best_global_step, os.path.join(output_dir, "best"))
    else:
        logger.info("No evaluation has run yet, so there is no best/ model; latest/ holds the current weights.")
    if saved_latest:
        logger.info("Latest weights (step %d) -> %s", state.global_step, os.path.join(output_dir, "latest"))
    logger.info("Curves: %s; checkpoints, metrics.jsonl, train.log and run_config.json are in %s.",
                os.path.join(output_dir, "training_curves.png"), output_dir)
    logger.info("Resume: %s", shlex.join(["python", "train.py", *sys.argv[1:]]))
    if state.best_global_step:
        logger.info("Use: python restore.py --model %s --input damaged.txt --output restored.jsonl",
                    shlex.quote(os.path.join(output_dir, "best")))
