"""DelayedEarlyStopping and best/ tracking: when training stops, and what counts as better."""

import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerControl, TrainerState

from callbacks import BestModelCallback, DelayedEarlyStopping

ARGS = SimpleNamespace(metric_for_best_model="eval_loss", greater_is_better=False, world_size=1)


def evaluate_sequence(callback, losses, eval_steps=1000, args=ARGS, state=None):
    """Feed one eval_loss per evaluation; return the step at which training was told to stop."""
    state = state or TrainerState()
    control = TrainerControl()
    callback.on_train_begin(args, state, control)
    for index, loss in enumerate(losses, start=1):
        state.global_step = index * eval_steps
        callback.on_evaluate(args, state, control, metrics={"eval_loss": loss})
        if control.should_training_stop:
            return state.global_step
    return None


def test_plateau_before_start_step_never_stops_training():
    callback = DelayedEarlyStopping(start_step=6000, patience=2, threshold=0.001)
    # A long flat first plateau (steps 1000-5000), then the second drop.
    losses = [3.0, 3.0, 3.0, 3.0, 3.0, 2.0, 1.5, 1.2]
    assert evaluate_sequence(callback, losses) is None
    assert callback.best_metric == 1.2 and callback.patience_counter == 0


def test_stops_after_patience_evaluations_without_improvement():
    callback = DelayedEarlyStopping(start_step=0, patience=3, threshold=0.001)
    stop_step = evaluate_sequence(callback, [2.0, 1.0, 1.0, 0.9995, 1.1, 0.5])
    assert stop_step == 5000
    assert "did not improve" in callback.stop_reason and "5000" in callback.stop_reason
    assert callback.best_step == 2000


def test_improvement_must_exceed_threshold():
    callback = DelayedEarlyStopping(start_step=0, patience=2, threshold=0.1)
    assert evaluate_sequence(callback, [1.0, 0.95, 0.92]) == 3000
    callback = DelayedEarlyStopping(start_step=0, patience=2, threshold=0.1)
    assert evaluate_sequence(callback, [1.0, 0.85, 0.7, 0.55]) is None


def test_patience_counter_resets_on_improvement():
    callback = DelayedEarlyStopping(start_step=0, patience=2, threshold=0.0)
    assert evaluate_sequence(callback, [1.0, 1.0, 0.9, 0.9, 0.8, 0.8]) is None
    assert callback.patience_counter == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_metric_is_never_an_improvement(bad):
    callback = DelayedEarlyStopping(start_step=0, patience=2, threshold=0.001)
    assert evaluate_sequence(callback, [1.0, bad, bad]) == 3000
    assert callback.best_metric == 1.0
    callback = DelayedEarlyStopping(start_step=0, patience=2, threshold=0.001)
    assert evaluate_sequence(callback, [bad, bad]) == 2000
    assert callback.best_metric is None


def test_greater_is_better_metrics():
    args = SimpleNamespace(metric_for_best_model="span_accuracy", greater_is_better=True, world_size=1)
    callback = DelayedEarlyStopping(start_step=0, patience=2, threshold=0.01)
    state = TrainerState()
    control = TrainerControl()
    callback.on_train_begin(args, state, control)
    for step, accuracy in [(1, 0.5), (2, 0.7), (3, 0.705), (4, 0.69)]:
        state.global_step = step
        callback.on_evaluate(args, state, control, metrics={"eval_span_accuracy": accuracy})
    assert control.should_training_stop and callback.best_metric == 0.7


def test_state_survives_a_resume_and_new_constants_win(tmp_path):
    before = DelayedEarlyStopping(start_step=0, patience=5, threshold=0.001)
    evaluate_sequence(before, [1.0, 0.5, 0.6, 0.7])
    assert before.patience_counter == 2
    # What the Trainer writes into trainer_state.json and reads back on resume.
    TrainerState(stateful_callbacks=[before]).save_to_json(tmp_path / "trainer_state.json")
    state = TrainerState.load_from_json(tmp_path / "trainer_state.json")
    state.global_step = 4000
    after = DelayedEarlyStopping(start_step=0, patience=3, threshold=0.001)
    after.on_train_begin(ARGS, state, TrainerControl())
    assert (after.patience_counter, after.best_metric, after.best_step) == (2, 0.5, 2000)
    assert after.patience == 3
    control = TrainerControl()
    state.global_step = 5000
    after.on_evaluate(ARGS, state, control, metrics={"eval_loss": 0.55})
    assert control.should_training_stop


def test_best_folder_follows_the_best_finite_evaluation(tmp_path):
    state = TrainerState()

    def save(folder):
        os.makedirs(folder)
        (Path(folder) / "step").write_text(str(state.global_step))

    callback = BestModelCallback(str(tmp_path / "best"), save)
    for step, loss in [(10, 3.0), (20, math.nan), (30, 2.0), (40, 2.5), (50, math.inf)]:
        state.global_step = step
        callback.on_evaluate(ARGS, state, TrainerControl(), metrics={"eval_loss": loss})
        if (tmp_path / "best" / "step").read_text() == str(step):
            state.best_metric = loss  # what the Trainer does right after on_evaluate
    assert (tmp_path / "best" / "step").read_text() == "30"
    assert sorted(os.listdir(tmp_path)) == ["best"]  # no temporary folders left behind


def decide_in_process(rank, port, losses, results):
    """One of two torchrun-like processes: feeds its own losses to DelayedEarlyStopping."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    args = SimpleNamespace(metric_for_best_model="eval_loss", greater_is_better=False, world_size=2, device="cpu")
    callback, state = DelayedEarlyStopping(start_step=0, patience=2, threshold=0.0), TrainerState()
    callback.on_train_begin(args, state, TrainerControl())
    stops = []
    for evaluation, loss in enumerate(losses[rank], start=1):
        state.global_step, control = evaluation * 10, TrainerControl()
        callback.on_evaluate(args, state, control, metrics={"eval_loss": loss})
        stops.append(control.should_training_stop)
    results.put((rank, stops))
    dist.destroy_process_group()


def test_two_processes_take_one_early_stopping_decision():
    """Even when the processes' metrics differ, every process stops at the same evaluation (the main
    process's), or one would wait forever for the others in the next gradient exchange."""
    import multiprocessing
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    losses = [[1.0, 0.5, 0.4, 0.3, 0.3, 0.3], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]]  # rank 1 alone would stop early
    processes = [context.Process(target=decide_in_process, args=(rank, port, losses, results)) for rank in (0, 1)]
    for process in processes:
        process.start()
    decided = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert decided[0] == decided[1] == [False, False, False, False, False, True]
