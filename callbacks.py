"""Trainer callbacks that carry the DomainFocus training strategy.

* DelayedEarlyStopping        -- early stopping that waits out the early plateaus of domain transfer
* SafeDetailedProgressCallback -- one progress line per log step with an honest ETA
* LiveProgressBar              -- a live bar in interactive terminals, nothing in log files
* MetricsFileCallback          -- metrics.jsonl, the single record of a run
* BestModelCallback            -- keeps OUTPUT_DIR/best/ equal to the best evaluated weights
* CurvesCallback               -- redraws training_curves.png at every evaluation
* GracefulInterrupt            -- Ctrl+C / SIGTERM: finish the step, save, stop

All of them act through `control` or write files; none of them changes the model.
"""

import json
import logging
import math
import os
import shutil
import signal
import time

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

logger = logging.getLogger("domainfocus")


def save_atomically(save_function, target):
    """Write a folder through `save_function(temporary_folder)`, then swap it into `target`.

    A crash or a second Ctrl+C while writing leaves the previous `target` untouched; the only
    window without `target` lies between two renames, and `recover_interrupted_saves` mends it.
    """
    target = os.path.abspath(target)
    temporary, previous = target + ".tmp", target + ".old"
    shutil.rmtree(temporary, ignore_errors=True)
    save_function(temporary)
    if os.path.isdir(target):
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
    os.replace(temporary, target)
    shutil.rmtree(previous, ignore_errors=True)


def recover_interrupted_saves(folder):
    """Undo what an interrupted `save_atomically` left behind in `folder`."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)
        elif name.endswith(".old"):
            target = path[: -len(".old")]
            if os.path.isdir(target):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, target)
                logger.warning("Restored %s from the copy kept during an interrupted save.", target)


def is_better(value, best, greater_is_better):
    """True when `value` is finite and beats `best` (None means there is no best yet)."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if greater_is_better else value < best


def format_duration(seconds):
    seconds = int(round(seconds))
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{days}d {clock}" if days else clock


class DelayedEarlyStopping(TrainerCallback, ExportableState):
    """Early stopping that ignores every evaluation before `start_step`.

    Domain transfer shows a long early plateau and a second drop in loss later on; stopping on
    the first plateau leaves a model with general language sense and little domain knowledge.
    From `start_step` on, training stops after `patience` evaluations in a row that fail to
    improve the best metric by more than `threshold` (an absolute difference). The first
    evaluation at or after `start_step` sets the reference. A NaN or infinite metric is never an
    improvement. The counter and the best value live in every checkpoint and survive a resume;
    the constants given now win over the ones saved in the checkpoint.
    """

    def __init__(self, start_step=6000, patience=5, threshold=0.001):
        if start_step < 0 or patience < 1 or threshold < 0:
            raise ValueError("DelayedEarlyStopping needs start_step >= 0, patience >= 1 and threshold >= 0.")
        self.start_step = start_step
        self.patience = patience
        self.threshold = threshold
        self.patience_counter = 0
        self.best_metric = None
        self.best_step = None
        self.stop_reason = None
        self.metric_name = None
        self.greater_is_better = False

    def state(self):
        return {
            "args": {"start_step": self.start_step, "patience": self.patience, "threshold": self.threshold},
            "attributes": {
                "patience_counter": self.patience_counter,
                "best_metric": self.best_metric,
                "best_step": self.best_step,
            },
        }

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.metric_for_best_model:
            raise ValueError("DelayedEarlyStopping needs metric_for_best_model in the training arguments.")
        self.metric_name = args.metric_for_best_model
        if not self.metric_name.startswith("eval_"):
            self.metric_name = "eval_" + self.metric_name
        self.greater_is_better = bool(args.greater_is_better)
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step == 0 or not isinstance(saved, dict):
            return
        for name, value in saved.get("attributes", {}).items():
            setattr(self, name, value)
        for name, value in saved.get("args", {}).items():
            if getattr(self, name) != value:
                logger.info("Early stopping: %s changed from %s (checkpoint) to %s; using %s.",
                            name, value, getattr(self, name), getattr(self, name))
        logger.info("Early stopping state restored: %d of %d evaluations without improvement, best %s at step %s.",
                    self.patience_counter, self.patience, self.best_metric, self.best_step)

    def improvement(self, value):
        return value - self.best_metric if self.greater_is_better else self.best_metric - value

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.metric_name)
        if value is None:
            logger.warning("Early stopping: metric %s missing from the evaluation; nothing counted.", self.metric_name)
            return
        if state.global_step < self.start_step:
            logger.info("Early stopping: waiting until step %d (plateaus before it are expected).", self.start_step)
            return
        if self.best_metric is None and math.isfinite(value):
            self.best_metric, self.best_step = value, state.global_step
            logger.info("Early stopping: active from now on; reference %s %.4f.", self.metric_name, value)
            return
        if self.best_metric is not None and math.isfinite(value) and self.improvement(value) > self.threshold:
            self.best_metric, self.best_step, self.patience_counter = value, state.global_step, 0
            return
        self.patience_counter += 1
        if not math.isfinite(value):
            logger.warning("Early stopping: %s is %s at step %d; counted as no improvement.",
                           self.metric_name, value, state.global_step)
        logger.info("Early stopping: no improvement larger than %s for %d of %d evaluations.",
                    self.threshold, self.patience_counter, self.patience)
        if self.patience_counter >= self.patience:
            self.stop_reason = (
                f"early stopping at step {state.global_step}: {self.metric_name} did not improve by more than "
                f"{self.threshold} for {self.patience} evaluations (best {self.best_metric} at step {self.best_step})"
            )
            logger.info("Stopping: %s.", self.stop_reason)
            control.should_training_stop = True
            control.should_save = True  # the stopped state is a checkpoint too, so a resume knows it is done


class SafeDetailedProgressCallback(TrainerCallback):
    """One progress line per log step, one line per evaluation, on the main process only.

    The ETA is built from the time of optimizer steps alone (evaluation and saving excluded),
    skipping the first `warmup_steps` steps of each start because they include compilation,
    caching and allocator warm-up; the measured mean evaluation time is added once per
    evaluation still to come.
    """

    def __init__(self, warmup_steps=5, clock=time.monotonic):
        self.warmup_steps = warmup_steps
        self.clock = clock
        self.step_seconds = 0.0
        self.measured_steps = 0
        self.evaluation_seconds = []
        self.first_step = 0
        self.started = None
        self.step_started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.first_step = state.global_step
        self.started = self.clock()

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_started is not None and state.global_step - self.first_step > self.warmup_steps:
            self.step_seconds += self.clock() - self.step_started
            self.measured_steps += 1

    def seconds_per_step(self):
        return self.step_seconds / self.measured_steps if self.measured_steps else None

    def eta_seconds(self, args, state):
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        remaining_steps = max(state.max_steps - state.global_step, 0)
        eta = remaining_steps * per_step
        if self.evaluation_seconds and args.eval_steps:
            remaining_evaluations = state.max_steps // int(args.eval_steps) - state.global_step // int(args.eval_steps)
            eta += max(remaining_evaluations, 0) * sum(self.evaluation_seconds) / len(self.evaluation_seconds)
        return eta

    def progress_line(self, args, state, logs):
        total = max(state.max_steps, 1)
        fields = [f"step {state.global_step}/{state.max_steps} ({100 * state.global_step / total:.1f}%)",
                  f"epoch {state.epoch or 0:.2f}"]
        if "loss" in logs:
            fields.append(f"loss {logs['loss']:.4f}")
        if "learning_rate" in logs:
            fields.append(f"lr {logs['learning_rate']:.2e}")
        per_step = self.seconds_per_step()
        if per_step:
            samples_per_step = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
            fields += [f"{per_step:.2f} s/step", f"{samples_per_step / per_step:.1f} samples/s"]
        fields.append(f"elapsed {format_duration(self.clock() - self.started)}")
        eta = self.eta_seconds(args, state)
        fields.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA measuring")
        return " | ".join(fields)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            logger.info(self.progress_line(args, state, logs))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        if "eval_runtime" in metrics:
            self.evaluation_seconds.append(metrics["eval_runtime"])
        if not state.is_world_process_zero:
            return
        shown = [f"{name[len('eval_'):]} {value:.4f}" for name, value in metrics.items()
                 if isinstance(value, float) and name not in ("eval_runtime", "eval_samples_per_second",
                                                              "eval_steps_per_second", "epoch")]
        runtime = metrics.get("eval_runtime")
        took = f" ({runtime:.1f} s)" if runtime is not None else ""
        logger.info("evaluation at step %d%s: %s", state.global_step, took, ", ".join(shown))


class LiveProgressBar(TrainerCallback):
    """A progress bar (steps, ETA, loss) for interactive terminals only; logs and nohup get clean lines."""

    def __init__(self, stream):
        self.stream = stream
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", file=self.stream,
                            dynamic_ncols=True, leave=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsFileCallback(TrainerCallback):
    """Appends one JSON object per log or evaluation event to `path` (metrics.jsonl)."""

    def __init__(self, path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3), **logs}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


class BestModelCallback(TrainerCallback):
    """Keeps `folder` equal to the best evaluated weights, saved at the moment they are evaluated.

    Runs before the Trainer updates `state.best_metric`, so that value is still the previous
    best; the comparison is the Trainer's own, except that a NaN never wins.
    """

    def __init__(self, folder, save_function, write_card=None):
        self.folder = folder
        self.save_function = save_function
        self.write_card = write_card  # write_card(folder, step, metrics) adds a model card to the save

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model
        name = name if name.startswith("eval_") else "eval_" + name
        value = (metrics or {}).get(name)
        if not is_better(value, state.best_metric, args.greater_is_better):
            return
        if state.is_world_process_zero:
            def save(folder):
                self.save_function(folder)
                if self.write_card:
                    self.write_card(folder, state.global_step, metrics)

            save_atomically(save, self.folder)
            logger.info("New best %s %.4f at step %d, saved to %s", name, value, state.global_step, self.folder)


class Interrupted(KeyboardInterrupt):
    """Raised by GracefulInterrupt when the user insists; carries the signal for the exit code."""

    def __init__(self, signal_number):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


class CurvesCallback(TrainerCallback):
    """Redraws OUTPUT_DIR/training_curves.png from metrics.jsonl after every evaluation."""

    def __init__(self, output_dir, early_stopping_start_step, metric):
        self.output_dir = output_dir
        self.early_stopping_start_step = early_stopping_start_step
        self.metric = metric

    def on_evaluate(self, args, state, control, **kwargs):
        from report import plot_run

        if state.is_world_process_zero:
            plot_run(self.output_dir, self.early_stopping_start_step, self.metric)


class GracefulInterrupt(TrainerCallback):
    """Turns SIGINT / SIGTERM into "finish this step, save a checkpoint, stop".

    Before `arm()` (data loading, model loading) a signal aborts at once: nothing has been
    trained, so there is nothing to save. After it, the first signal asks the Trainer to stop
    after the current optimizer step (or the current evaluation) and to save; a second one
    raises `Interrupted` at once. Every save is atomic, so that loses nothing on disk.
    """

    def __init__(self):
        self.signal_number = None
        self.armed = False

    def install(self):
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def arm(self):
        self.armed = True

    def handle(self, signal_number, frame):
        first = self.signal_number is None
        self.signal_number = self.signal_number or signal_number
        if not self.armed or not first:
            raise Interrupted(self.signal_number)
        name = signal.Signals(signal_number).name
        logger.warning("%s received: finishing the current step, then saving. "
                       "Press Ctrl+C again to quit at once (saves already on disk stay intact).", name)

    @property
    def exit_code(self):
        return 128 + self.signal_number if self.signal_number else 0

    def request_stop(self, control):
        if self.signal_number is not None:
            control.should_training_stop = True
            control.should_save = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        return self.request_stop(control)

    def on_evaluate(self, args, state, control, **kwargs):
        return self.request_stop(control)
