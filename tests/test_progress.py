"""The progress line: its fields, and an ETA that leaves out warm-up steps and evaluation time."""

from types import SimpleNamespace

from transformers import TrainerControl, TrainerState

from callbacks import SafeDetailedProgressCallback
from domainfocus.console import format_duration

ARGS = SimpleNamespace(train_batch_size=4, gradient_accumulation_steps=8, world_size=1, eval_steps=100)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run_steps(callback, state, clock, count, seconds_each):
    control = TrainerControl()
    for _ in range(count):
        callback.on_step_begin(ARGS, state, control)
        clock.now += seconds_each
        state.global_step += 1
        callback.on_step_end(ARGS, state, control)


def test_eta_ignores_slow_first_steps_and_evaluation_pauses():
    clock = FakeClock()
    callback = SafeDetailedProgressCallback(warmup_steps=5, clock=clock)
    state = TrainerState(max_steps=1000)
    callback.on_train_begin(ARGS, state, TrainerControl())
    run_steps(callback, state, clock, 5, seconds_each=30.0)  # compilation, caches: not representative
    run_steps(callback, state, clock, 45, seconds_each=2.0)
    clock.now += 600  # a long save or evaluation between steps is not step time
    run_steps(callback, state, clock, 50, seconds_each=2.0)
    assert callback.seconds_per_step() == 2.0
    assert callback.eta_seconds(ARGS, state) == 900 * 2.0
    # Once evaluations have been timed, the 9 evaluations still to come are added.
    callback.on_evaluate(ARGS, state, TrainerControl(), metrics={"eval_loss": 1.0, "eval_runtime": 40.0})
    assert callback.eta_seconds(ARGS, state) == 900 * 2.0 + 9 * 40.0


def test_progress_line_has_every_field():
    clock = FakeClock()
    callback = SafeDetailedProgressCallback(warmup_steps=0, clock=clock)
    state = TrainerState(max_steps=400, epoch=0.25)
    callback.on_train_begin(ARGS, state, TrainerControl())
    run_steps(callback, state, clock, 100, seconds_each=0.5)
    line = callback.progress_line(ARGS, state, {"loss": 1.23456, "learning_rate": 0.001})
    assert line == ("step 100/400 (25.0%) | epoch 0.25 | loss 1.2346 | lr 1.00e-03 | 0.50 s/step | "
                    "64.0 samples/s | elapsed 0:00:50 | ETA 0:02:30")
    assert "\r" not in line


def test_eta_says_measuring_until_steps_are_measured():
    clock = FakeClock()
    callback = SafeDetailedProgressCallback(warmup_steps=5, clock=clock)
    state = TrainerState(max_steps=10)
    callback.on_train_begin(ARGS, state, TrainerControl())
    run_steps(callback, state, clock, 3, seconds_each=1.0)
    assert callback.progress_line(ARGS, state, {"loss": 2.0}).endswith("ETA measuring")


def test_a_resumed_run_measures_only_its_own_steps():
    clock = FakeClock()
    callback = SafeDetailedProgressCallback(warmup_steps=2, clock=clock)
    state = TrainerState(max_steps=100, global_step=50)
    callback.on_train_begin(ARGS, state, TrainerControl())
    run_steps(callback, state, clock, 2, seconds_each=20.0)
    run_steps(callback, state, clock, 8, seconds_each=1.0)
    assert callback.seconds_per_step() == 1.0 and callback.eta_seconds(ARGS, state) == 40.0


def test_durations_read_like_clocks():
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(3 * 86400 + 3723) == "3d 1:02:03"
