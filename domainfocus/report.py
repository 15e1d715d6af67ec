"""What a run tells its user in words: the plan before it, the run record, the model card, the
closing summary.

* `python train.py --check` prints the plan: data, masking, schedule, early stopping, outputs
  (the memory lines come from memory.py).
* OUTPUT_DIR/run_config.json records the constants and the command of every run.
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

from domainfocus.console import format_duration
from domainfocus.data import masking_mode
from domainfocus.memory import evaluation_memory, gigabytes, gpu_memory
from domainfocus.sharding import shard_group_size

logger = logging.getLogger("domainfocus")


def plan_record(model, config, half, lengths, world_size, local_size=None):
    """The memory plan as one JSON-ready object (the last line of --check), in bytes, per GPU."""
    parts, total = gpu_memory(model, config, half, lengths, world_size, local_size)
    evaluation = evaluation_memory(model, config, half, world_size, local_size)
    budget = int(config["GPU_MEMORY_GB"] * 2 ** 30)
    return {"parameters": sum(parameter.numel() for parameter in model.parameters()),
            "processes": world_size, "shard_group": shard_group_size(config["FSDP"], world_size, local_size or world_size),
            "weights_bytes": parts["weights"], "gradients_bytes": parts["gradients"],
            "optimizer_state_bytes": parts["optimizer state"], "gathered_weights_bytes": parts.get("gathered weights", 0),
            "activations_bytes": parts["activations"], "cuda_context_bytes": parts["CUDA context"],
            "total_bytes": total, "evaluation_bytes": evaluation, "gpu_memory_bytes": budget,
            "fits": max(total, evaluation or 0) <= budget,
            "effective_batch_size": config["PER_DEVICE_BATCH_SIZE"] * config["GRADIENT_ACCUMULATION_STEPS"] * world_size}


def masking_record(config, train_counts):
    """How the training examples are masked, for --check. Raw text: measured on examples masked as
    in epoch 0; prepared JSON Lines: from the stats.json prepare.py wrote beside TRAIN_FILE, if any."""
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


def plan_text(config, counts, plan, memory, checkpoint, world_size=1):
    lines = ["Plan (nothing is trained or written by --check):"]
    for split, count in counts.items():
        lines.append(f"  {split:<10} {count['examples']:,} examples, {count['input_tokens']:,} input and "
                     f"{count['target_tokens']:,} target tokens; truncated: {count['inputs_truncated']:,} inputs, "
                     f"{count['targets_truncated']:,} targets"
                     + (f"; repeated documents left out: {count['duplicates']:,}" if "duplicates" in count else "")
                     + (f"; also in training: {count['in_training']:,} (alike but for digits and punctuation: "
                        f"{count['near_training'] - count['in_training']:,} more)" if "in_training" in count else ""))
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


