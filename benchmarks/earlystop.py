"""The strategy's own headline: where plain early stopping would have stopped a run, and what the
model was worth there, against where DelayedEarlyStopping stops it.

Both callbacks are replayed over the evaluation history a real run recorded in metrics.jsonl: each
evaluation is handed to them in order, as the Trainer hands it (transformers' EarlyStoppingCallback
sees the best value before the Trainer updates it, as in Trainer._evaluate). A replay is exact for
the stopping decision; what a stopped run would have kept is the best evaluation up to its stop.
"""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

from benchmarks.common import HERE, print_table
from domainfocus.settings import metric_for_best_model

# name: train.py arguments of a run on the demo data (validation shares no sentence with training).
RUNS = {
    "demo (python train.py --demo)": ["--demo"],
    "longer (--demo --MAX_STEPS=2400 --EARLY_STOPPING_START_STEP=1200)": [
        "--demo", "--MAX_STEPS=2400", "--EARLY_STOPPING_START_STEP=1200"],
}


def evaluations(metrics_file):
    """The evaluation records of a run, in step order; a step evaluated twice (a resume) keeps the last."""
    by_step = {}
    with open(metrics_file, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if "eval_loss" in record:
                by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def replay(callback, history, metric, greater_is_better, is_better):
    """The step at which `callback` stops a run with this evaluation history (None: never); `is_better`
    is callbacks.is_better, the Trainer's own comparison."""
    from transformers import TrainerControl, TrainerState

    args = SimpleNamespace(metric_for_best_model=metric, greater_is_better=greater_is_better, world_size=1,
                           load_best_model_at_end=True, eval_strategy="steps")
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(args, state, control)
    for record in history:
        state.global_step = record["step"]
        callback.on_evaluate(args, state, control, metrics=record)
        if is_better(record[metric], state.best_metric, greater_is_better):
            state.best_metric = record[metric]  # what Trainer._determine_best_metric does after the callbacks
        if control.should_training_stop:
            return record["step"]
    return None


def kept(history, stop, metric, greater_is_better):
    """The best evaluation up to `stop` (the whole run when None): what best/ holds there."""
    seen = [record for record in history if stop is None or record["step"] <= stop]
    choose = max if greater_is_better else min
    return choose(seen, key=lambda record: record[metric])


def bench_earlystop(options, folder):
    """Train the demo and a longer run (about 2 and 6 minutes on 2 cores), replay both stopping rules."""
    from transformers import EarlyStoppingCallback

    tool, DelayedEarlyStopping = options.train, options.callbacks.DelayedEarlyStopping
    rows = []
    for name, arguments in RUNS.items():
        output = os.path.join(folder, "earlystop-" + str(len(rows)))
        subprocess.run([sys.executable, os.path.join(HERE, "train.py"), *arguments, f"--OUTPUT_DIR={output}"],
                       check=True, cwd=HERE, stdout=subprocess.DEVNULL,
                       env={**os.environ, "HF_HOME": os.path.join(folder, "hf-home")})
        config, _ = tool.parse_arguments(arguments, tool.default_config())
        metric = metric_for_best_model(config)
        greater = metric != "eval_loss"  # as the trainer's arguments say it
        history = evaluations(os.path.join(output, "metrics.jsonl"))
        patience, threshold = config["EARLY_STOPPING_PATIENCE"], config["EARLY_STOPPING_THRESHOLD"]
        is_better = options.callbacks.is_better
        stops = {
            "transformers' EarlyStoppingCallback": replay(EarlyStoppingCallback(patience, threshold), history, metric,
                                                         greater, is_better),
            f"DelayedEarlyStopping (from step {config['EARLY_STOPPING_START_STEP']})": replay(
                DelayedEarlyStopping(config["EARLY_STOPPING_START_STEP"], patience, threshold), history, metric,
                greater, is_better),
        }
        for rule, stop in stops.items():
            best = kept(history, stop, metric, greater)
            rows.append((name, rule, "never (ran its schedule)" if stop is None else str(stop), str(best["step"]),
                         f"{best['eval_loss']:.4f}", f"{best['eval_span_accuracy']:.3f}",
                         f"{best['eval_char_accuracy']:.3f}", f"{best['eval_exact_match']:.3f}"))
    print("\nEarly stopping replayed over each run's recorded evaluations (patience and threshold as set; "
          "best/ as it stands at the stop):\n")
    print_table(["run", "stopping rule", "stops at step", "best step", "eval_loss", "span_accuracy",
                 "char_accuracy", "exact_match"], rows)
