"""Trainer callbacks that carry the DomainFocus training strategy.

* DelayedEarlyStopping        -- early stopping that waits out the early plateaus of domain transfer
* SafeDetailedProgressCallback -- one progress line per log step with an honest ETA
* LiveProgressBar              -- a live bar in interactive terminals, nothing in log files
* MetricsFileCallback          -- metrics.jsonl, the single record of a run
* BestModelCallback            -- keeps OUTPUT_DIR/best/ equal to the best evaluated weights
* CurvesCallback               -- redraws training_curves.png at every evaluation
* GracefulInterrupt            -- Ctrl+C / SIGTERM: finish the step, save, stop
* NonFiniteGuard               -- skips NaN/inf steps, stops a diverged run without touching best/
* ResumeCheck                  -- records batch size, processes, data and schedule in every checkpoint

All of them act through `control` or write files; none of them changes the model.
"""

import json
import logging
import math
import os
import signal
import time

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from domainfocus.checkpoints import SaveFailed, fact_changes, save_atomically, saved_facts, write_error
from domainfocus.console import format_duration
from domainfocus.curves import plot_run
from domainfocus.distributed import agree, main_process_value

logger = logging.getLogger("domainfocus")


def is_better(value, best, greater_is_better):
    """True when `value` is finite and beats `best` (None means there is no best yet)."""
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if greater_is_better else value < best


class DelayedEarlyStopping(TrainerCallback, ExportableState):
    """Early stopping that ignores every evaluation before `start_step`.

    Domain transfer shows a long early plateau and a second drop in loss later on; stopping on
    the first plateau leaves a model with general language sense and little domain knowledge.
    From `start_step` on, training stops after `patience` evaluations in a row that fail to
    improve the best metric by more than `threshold` (an absolute difference). The first
    evaluation at or after `start_step` sets the reference. A NaN or infinite metric is never an
    improvement. The counter and the best value live in every checkpoint and survive a resume;
    the constants given now win over the ones saved in the checkpoint. `evaluation` describes what
    an evaluation measures (validation data, samples, beams, ...): a checkpoint evaluated otherwise,
    like one with another metric, starts the comparison afresh, since its best value is not
    comparable. Under torchrun every process decides on the main process's value, so they all stop
    at the same evaluation.
    """

    def __init__(self, start_step=6000, patience=5, threshold=0.001, evaluation=None):
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
        self.evaluation = evaluation

    def state(self):
        return {
            "args": {"start_step": self.start_step, "patience": self.patience, "threshold": self.threshold},
            "attributes": {
                "patience_counter": self.patience_counter,
                "best_metric": self.best_metric,
                "best_step": self.best_step,
                "metric_name": self.metric_name,
                "evaluation": self.evaluation,
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
        attributes = dict(saved.get("attributes", {}))
        if attributes.setdefault("metric_name", self.metric_name) != self.metric_name:
            logger.warning("Early stopping: METRIC_FOR_BEST_MODEL changed from %s (checkpoint) to %s; comparing "
                           "afresh on %s from the next evaluation.", attributes["metric_name"], self.metric_name,
                           self.metric_name)
            return
        if attributes.setdefault("evaluation", self.evaluation) != self.evaluation:
            logger.warning("Early stopping: the evaluation changed since the checkpoint; comparing afresh on %s from "
                           "the next evaluation.", self.metric_name)
            return
        for name, value in attributes.items():
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
        # Under torchrun: one decision for all processes, taken on the main process's value, so that
        # no process stops while the others wait for it in the next step.
        value = main_process_value(args, value)
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
        if control.should_evaluate and state.is_world_process_zero:
            logger.info("evaluating at step %d ...", state.global_step)

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
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as error:
            raise SaveFailed(f"could not write {self.path}: {write_error(error)}") from error


class BestModelCallback(TrainerCallback):
    """Keeps `folder` equal to the best evaluated weights, saved at the moment they are evaluated.

    The folder records its own step and metric (best_model.json, written inside the same atomic
    save) and is replaced only by a strictly better evaluation of the same metric than both that
    record and the Trainer's `state.best_metric` (still the previous best when this runs). So after
    a crash between writing best/ and the checkpoint, the resumed run, whose state knows only an
    older best, cannot overwrite a better best/ with a worse model. A NaN never wins. A record of
    another metric or another `evaluation` (see DelayedEarlyStopping) is not compared with.
    """

    RECORD = "best_model.json"

    def __init__(self, folder, save_function, write_card=None, evaluation=None):
        self.folder = folder
        self.evaluation = evaluation
        self.save_function = save_function
        self.write_card = write_card  # write_card(folder, step, metrics) adds a model card to the save
        self.recorded = None  # {"metric", "value", "step"} of the weights in `folder`

    def on_train_begin(self, args, state, control, **kwargs):
        try:
            with open(os.path.join(self.folder, self.RECORD), encoding="utf-8") as handle:
                self.recorded = json.load(handle)
        except (OSError, ValueError):
            self.recorded = None  # no best/ yet, or one written before this record existed

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model
        name = name if name.startswith("eval_") else "eval_" + name
        value = (metrics or {}).get(name)
        recorded = self.recorded if self.recorded and self.recorded.get("metric") == name and self.recorded.get(
            "evaluation", self.evaluation) == self.evaluation else None
        better = is_better(value, state.best_metric, args.greater_is_better) and not (
            recorded and not is_better(value, recorded["value"], args.greater_is_better))
        # Decided once, by the main process, which writes best/: under torchrun every process must
        # know, because gathering a sharded model's weights for the save takes all of them.
        if not main_process_value(args, better):
            return
        record = {"metric": name, "value": value, "step": state.global_step, "evaluation": self.evaluation}
        weights = self.save_function.gather() if hasattr(self.save_function, "gather") else None
        if state.is_world_process_zero:
            def save(folder):
                if weights is None:
                    self.save_function(folder)
                else:
                    self.save_function(folder, weights)
                with open(os.path.join(folder, self.RECORD), "w", encoding="utf-8") as handle:
                    json.dump(record, handle)
                if self.write_card:
                    self.write_card(folder, state.global_step, metrics)

            save_atomically(save, self.folder)
            logger.info("New best %s %.4f at step %d, saved to %s", name, value, state.global_step, self.folder)
        self.recorded = record


class CurvesCallback(TrainerCallback):
    """Redraws OUTPUT_DIR/training_curves.png from metrics.jsonl after every evaluation."""

    def __init__(self, output_dir, early_stopping_start_step, metric):
        self.output_dir = output_dir
        self.early_stopping_start_step = early_stopping_start_step
        self.metric = metric

    def on_evaluate(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            try:
                plot_run(self.output_dir, self.early_stopping_start_step, self.metric)
            except OSError as error:  # a picture is not worth stopping a run for; the next save will tell
                logger.warning("Could not draw training_curves.png: %s", error)


class GracefulInterrupt(TrainerCallback):
    """Turns SIGINT / SIGTERM into "finish what you are doing, save, stop".

    Before `arm()` (data loading, model loading) a signal calls `quit_now(signal_number)` at
    once: nothing has been trained, so there is nothing to save. After it, the first signal lets
    the current optimizer step, evaluation or checkpoint save finish, then the Trainer saves a
    checkpoint and stops; a second signal calls `quit_now`. Every save is atomic or ignored by
    resume until complete, so quitting mid-save loses nothing on disk. Under torchrun the
    processes agree on the step to stop at.
    """

    def __init__(self, quit_now):
        self.quit_now = quit_now
        self.process = os.getpid()  # forked data-loader workers inherit the handler but not this number
        self.signal_number = None
        self.received_at = None
        self.armed = False
        self.activity = "start-up"
        # Under torchrun a Ctrl+C in the terminal reaches each worker twice, from the terminal
        # and forwarded by the launcher; a repeat within this window counts as the same press.
        self.repeat_window = 2.0 if "TORCHELASTIC_RUN_ID" in os.environ else 0.0

    def install(self):
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    def arm(self):
        self.armed = True
        self.activity = "a training step"

    def handle(self, signal_number, frame):
        if os.getpid() != self.process:
            return  # a data-loader worker forked from the trainer: the trainer itself decides
        now = time.monotonic()
        if self.received_at is not None and now - self.received_at < self.repeat_window:
            return
        first = self.signal_number is None
        self.signal_number = self.signal_number or signal_number
        self.received_at = now
        if not self.armed or not first:
            self.quit_now(self.signal_number)
        logger.warning("%s received during %s: finishing it, then saving. Press Ctrl+C again to quit at once "
                       "(saves already on disk stay intact).", signal.Signals(signal_number).name, self.activity)

    @property
    def exit_code(self):
        return 128 + self.signal_number if self.signal_number else 0

    def request_stop(self, args, control, save):
        number = agree(args, self.signal_number or 0)
        if number:
            self.signal_number = self.signal_number or number  # another process received it
            control.should_training_stop = True
            control.should_save = control.should_save or save
        return control

    def on_step_begin(self, args, state, control, **kwargs):
        self.activity = "a training step"

    def on_step_end(self, args, state, control, **kwargs):
        self.activity = ("evaluation" if control.should_evaluate else
                         "saving a checkpoint" if control.should_save else "a training step")
        return self.request_stop(args, control, save=True)

    def on_evaluate(self, args, state, control, **kwargs):
        self.activity = "saving a checkpoint" if control.should_save else "a training step"
        return self.request_stop(args, control, save=True)

    def on_save(self, args, state, control, **kwargs):
        # The checkpoint just written is the one to resume from; asking for another would
        # write the same folder a second time at the end of the epoch.
        self.activity = "a training step"
        return self.request_stop(args, control, save=False)


class NonFiniteGuard(TrainerCallback):
    """Skips every optimizer step whose gradients (or, under fp16, loss) are NaN or infinite, and
    stops training after `limit` such steps in a row.

    The Trainer subclass reports each micro-batch loss and each gradient norm; a bad step's
    gradients are dropped before the optimizer sees them, so the weights keep their last good
    values and `latest/` can be written from them. A stopped run saves no checkpoint and leaves
    `best/` alone. Under fp16 the gradient scaler already skips overflowing steps while it
    calibrates, so only a non-finite loss counts there.
    """

    def __init__(self, limit):
        self.limit = limit
        self.in_a_row = 0
        self.step_is_bad = False
        self.bad_loss = None
        self.bad_gradients = None
        self.last_good_step = None
        self.stop_reason = None

    def loss_seen(self, loss):
        value = float(loss)
        if not math.isfinite(value):
            self.step_is_bad, self.bad_loss = True, value

    def gradients_seen(self, grad_norm, scaler_skips_overflow):
        """True when this step's update must be skipped."""
        value = float(grad_norm) if grad_norm is not None else 0.0
        if not math.isfinite(value) and not scaler_skips_overflow:
            self.step_is_bad, self.bad_gradients = True, value
        return self.step_is_bad

    def on_step_end(self, args, state, control, **kwargs):
        bad = agree(args, int(self.step_is_bad))
        self.step_is_bad = False
        if not bad:
            self.in_a_row, self.last_good_step = 0, state.global_step
            return
        self.in_a_row += 1
        logger.warning("step %d: non-finite %s; update skipped (%d of %d in a row before stopping).",
                       state.global_step, f"loss ({self.bad_loss})" if self.bad_loss is not None else
                       f"gradient norm ({self.bad_gradients})", self.in_a_row, self.limit)
        self.bad_loss = self.bad_gradients = None
        if self.in_a_row >= self.limit:
            self.stop_reason = f"{self.limit} steps in a row with NaN/inf loss or gradients at step {state.global_step}"
            control.should_training_stop = True
            control.should_save = control.should_evaluate = False


class ResumeCheck(TrainerCallback, ExportableState):
    """Writes what a resume must match into every checkpoint: effective batch size, number of
    processes, a fingerprint of the training data (for raw text also the lexicons and each masking
    constant), the total number of steps, the learning rate, and what decides the evaluation (the
    facts named in `evaluation`: the metric that picks best/, the validation data and the evaluation
    settings). A changed evaluation starts the best-model comparison afresh: its figures are not
    comparable with the checkpoint's."""

    def __init__(self, evaluation=(), **facts):
        self.facts = facts
        self.evaluation = evaluation

    def state(self):
        return {"args": {}, "attributes": {"facts": self.facts}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__, {}).get("attributes", {}).get("facts", {})
        changed = fact_changes(saved, {name: self.facts.get(name) for name in self.evaluation})
        metric = self.facts.get("metric_for_best_model")
        if state.global_step and changed:
            # The checkpoint's best value is of another evaluation (a loss is no accuracy): start afresh.
            state.best_metric = state.best_global_step = state.best_model_checkpoint = None
            if saved.get("metric_for_best_model", metric) != metric:
                logger.warning("METRIC_FOR_BEST_MODEL changed from %s (checkpoint) to %s: best/ is replaced by the next "
                               "evaluation and compared on %s from then on.", saved["metric_for_best_model"], metric,
                               metric)
            else:
                logger.warning("The evaluation changed since the checkpoint (%s): its figures are not comparable, so "
                               "best/ is replaced by the next evaluation and early stopping compares afresh from it.",
                               "; ".join(changed))
        # A resumed TrainerState brings back the checkpoint's logging, evaluation and save
        # intervals; the constants as set now must win, as they do for early stopping.
        saved = {kind: getattr(state, f"{kind}_steps") for kind in ("logging", "eval", "save")}
        state.compute_steps(args, state.max_steps)
        for kind, value in saved.items():
            if value != getattr(state, f"{kind}_steps"):
                logger.info("%s_steps changed from %s (checkpoint) to %s; using %s.", kind, value,
                            getattr(state, f"{kind}_steps"), getattr(state, f"{kind}_steps"))

    def differences(self, checkpoint):
        """One phrase per fact that differs from `checkpoint` (empty when it predates this check)."""
        return fact_changes(saved_facts(checkpoint, type(self).__name__), self.facts)
