"""LoRA against full fine-tuning, trained by this tool's recipe for the same time. (LoRA's memory
plan for the mT5 sizes is in memory.py.)"""

import json

from benchmarks.common import print_table, recipe_in_child, restoration_cells

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
    print_table(["training", "trained parameters", "steps/s", "peak memory", "checkpoint", "eval_loss", "span_accuracy",
                 "char_accuracy", "exact_match"],
                [(name, f"{row['trainable'] / 1e6:.2f} M", f"{row['steps'] / row['seconds']:.2f}",
                  f"{row['peak_mb']:.0f} MB", f"{row['checkpoint_mb']:.1f} MB", f"{row['eval_loss']:.4f}",
                  *restoration_cells(row)) for name, row in rows.items()])
