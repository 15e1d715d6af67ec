"""Never lose work: a signal at every moment of a run, a second Ctrl+C, torn checkpoints, NaN,
a full disk and two processes. Each test runs train.py as a real subprocess and checks what a
user would find on disk afterwards."""

import json
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, learned, offline_environment, same_weights, tiny_run_arguments, trainer_state, wait_for, weights
from domainfocus.checkpoints import checkpoint_problem

SLOW_SAVES = {"PYTHONPATH": str(ROOT / "tests" / "slow_saves")}  # every checkpoint write takes seconds


def console(tmp_path):
    return (tmp_path / "console.log").read_text(encoding="utf-8", errors="replace")


def copy_of(finished_run, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(finished_run[0], output)
    return output


def test_signal_during_evaluation_finishes_it_then_saves(start_train, tmp_path, small_data):
    output = tmp_path / "out"
    # All 300 demo validation examples are restored by generation: an evaluation of several seconds.
    process = start_train(tiny_run_arguments(small_data, output, VALID_FILE=ROOT / "demo" / "valid.jsonl",
                                             GEN_EVAL_SAMPLES=300, MAX_STEPS=5000, EVAL_STEPS=5, SAVE_STEPS=5))
    wait_for(tmp_path / "console.log", r"evaluating at step 5 ")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    log = console(tmp_path)
    assert "SIGTERM received during evaluation" in log and "evaluation at step 5 " in log
    assert checkpoint_problem(output / "checkpoint-5") is None and not (output / "checkpoint-6").exists()
    assert same_weights(output / "latest", output / "checkpoint-5")
    assert same_weights(output / "best", output / "checkpoint-5")
    assert "Traceback" not in log


def test_a_signal_while_the_finished_process_shuts_down_changes_nothing(start_train, tmp_path, small_data):
    # Python puts the default handlers back while it shuts down; a Ctrl+C then killed the process
    # by signal (exit -2) after everything had been saved.
    process = start_train(tiny_run_arguments(small_data, tmp_path / "out", MAX_STEPS=4, EVAL_STEPS=2, SAVE_STEPS=2))
    wait_for(tmp_path / "console.log", r"Use: python restore.py", timeout=120)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) in (0, 130), console(tmp_path)[-2000:]
    assert same_weights(tmp_path / "out" / "latest", tmp_path / "out" / "checkpoint-4")


def test_signal_during_a_checkpoint_save_lets_it_finish(start_train, finished_run, tmp_path, small_data):
    output = copy_of(finished_run, tmp_path)
    process = start_train(tiny_run_arguments(small_data, output, MAX_STEPS=40, EVAL_STEPS=5, SAVE_STEPS=5),
                          environment=SLOW_SAVES)
    wait_for(tmp_path / "console.log", r"SLOW SAVE \S*checkpoint-25")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    log = console(tmp_path)
    assert "SIGINT received during saving a checkpoint" in log and "Traceback" not in log
    assert checkpoint_problem(output / "checkpoint-25") is None and not (output / "checkpoint-26").exists()
    assert trainer_state(output / "checkpoint-25")["global_step"] == 25
    assert same_weights(output / "latest", output / "checkpoint-25")


def test_second_ctrl_c_quits_at_once_and_every_earlier_save_survives(start_train, run_train, finished_run,
                                                                       tmp_path, small_data):
    output = copy_of(finished_run, tmp_path)
    arguments = tiny_run_arguments(small_data, output, MAX_STEPS=40, EVAL_STEPS=5, SAVE_STEPS=5)
    process = start_train(arguments, environment=SLOW_SAVES)
    wait_for(tmp_path / "console.log", r"SLOW SAVE \S*checkpoint-25")
    process.send_signal(signal.SIGINT)
    wait_for(tmp_path / "console.log", r"SIGINT received")
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    assert process.wait(timeout=60) == 130
    assert time.monotonic() - started < 10
    assert "Traceback" not in console(tmp_path)
    # The save in progress is incomplete; everything written before it is intact and loadable.
    assert checkpoint_problem(output / "checkpoint-25") is not None
    assert checkpoint_problem(output / "checkpoint-20") is None
    assert same_weights(output / "latest", finished_run[0] / "latest") and learned(output / "latest")
    assert learned(output / "best")
    result = run_train(tiny_run_arguments(small_data, output, MAX_STEPS=25, EVAL_STEPS=5, SAVE_STEPS=5))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Skipping {output / 'checkpoint-25'}: incomplete" in result.stdout
    assert f"Resuming from {output / 'checkpoint-20'}" in result.stdout
    assert checkpoint_problem(output / "checkpoint-25") is None


def test_signal_while_tokenizing_at_start_up_exits_without_outputs(start_train, finished_run, tmp_path,
                                                                    small_data):
    lines = (ROOT / "demo" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(lines * 20) + "\n", encoding="utf-8")  # 60,000 examples: seconds to tokenize
    output = tmp_path / "out"
    process = start_train(tiny_run_arguments((big, small_data[1]), output, MODEL_NAME_OR_PATH=finished_run[0] / "best"),
                          environment={"HF_HOME": str(tmp_path / "fresh-cache")})
    wait_for(tmp_path / "console.log", r"Tokenizing train")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    log = console(tmp_path)
    assert "Interrupted" in log and "Traceback" not in log
    assert {path.name for path in output.iterdir()} <= {"train.log"}  # no checkpoint, best/, latest/, config


@pytest.mark.parametrize("damage", ["missing trainer_state.json", "truncated weights", "truncated optimizer",
                                    "damaged trainer_state.json", "no weights"])
def test_checkpoint_problem_names_each_kind_of_damage(finished_run, tmp_path, damage):
    checkpoint = tmp_path / "checkpoint-20"
    shutil.copytree(finished_run[0] / "checkpoint-20", checkpoint)
    assert checkpoint_problem(checkpoint) is None
    if damage == "missing trainer_state.json":
        (checkpoint / "trainer_state.json").unlink()
    elif damage == "damaged trainer_state.json":
        (checkpoint / "trainer_state.json").write_text('{"global_step": 2')
    elif damage == "no weights":
        (checkpoint / "model.safetensors").unlink()
    else:
        path = checkpoint / ("model.safetensors" if damage == "truncated weights" else "optimizer.pt")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert checkpoint_problem(checkpoint)


@pytest.mark.parametrize("how", ["deleted", "damaged"])
def test_a_run_without_a_usable_checkpoint_is_never_started_over_by_auto(run_train, finished_run, tmp_path,
                                                                         small_data, how):
    output = copy_of(finished_run, tmp_path)
    for checkpoint in ("checkpoint-10", "checkpoint-20"):
        if how == "deleted":
            shutil.rmtree(output / checkpoint)
        else:
            (output / checkpoint / "trainer_state.json").unlink()
    best_before, metrics_before = weights(output / "best"), (output / "metrics.jsonl").read_bytes()
    result = run_train(tiny_run_arguments(small_data, output), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "holds an earlier run (best, latest, metrics.jsonl)" in line
    assert "RESUME=None and OVERWRITE_OUTPUT_DIR=True" in line and "another OUTPUT_DIR" in line
    if how == "damaged":
        assert "checkpoint-20: incomplete" in line and "checkpoint-10: incomplete" in line
    assert (output / "metrics.jsonl").read_bytes() == metrics_before
    after = weights(output / "best")
    assert all(after[name].equal(best_before[name]) for name in best_before)


def test_a_crash_between_writing_best_and_its_checkpoint_never_lets_best_regress(start_train, run_train, tmp_path,
                                                                                  small_data):
    output = tmp_path / "out"
    arguments = tiny_run_arguments(small_data, output, MAX_STEPS=20, EVAL_STEPS=5, SAVE_STEPS=10)
    process = start_train(arguments, environment=SLOW_SAVES)
    wait_for(tmp_path / "console.log", r"New best eval_loss \S+ at step 20")
    wait_for(tmp_path / "console.log", r"SLOW SAVE \S*checkpoint-20")  # best/ is written, its checkpoint is not
    process.kill()
    process.wait(timeout=30)
    record = json.loads((output / "best" / "best_model.json").read_text())
    assert record["step"] == 20 and record["metric"] == "eval_loss"
    best_weights = weights(output / "best")
    # Resumed from checkpoint-10, whose state knows only the best of step 10: the evaluation at step
    # 15 beats that, but not the best/ of step 20, so best/ must stay as it is.
    result = run_train(tiny_run_arguments(small_data, output, MAX_STEPS=15, EVAL_STEPS=5, SAVE_STEPS=10))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming from {output / 'checkpoint-10'}" in result.stdout
    assert "evaluation at step 15" in result.stdout
    assert json.loads((output / "best" / "best_model.json").read_text()) == record
    after = weights(output / "best")
    assert all(after[name].equal(best_weights[name]) for name in best_weights)


def test_resume_skips_a_damaged_newest_checkpoint(run_train, finished_run, tmp_path, small_data):
    output = copy_of(finished_run, tmp_path)
    weights_file = output / "checkpoint-20" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    result = run_train(tiny_run_arguments(small_data, output))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Skipping {output / 'checkpoint-20'}: model.safetensors is missing or damaged" in result.stdout
    assert f"Resuming from {output / 'checkpoint-10'}" in result.stdout
    assert checkpoint_problem(output / "checkpoint-20") is None


def test_nan_stops_with_its_own_exit_code_and_keeps_best(run_train, tmp_path, small_data):
    output = tmp_path / "out"
    # The warm-up makes the first update a no-op (learning rate 0), so step 1 is a good model; the
    # second update, at 1e30, blows the weights up and every later gradient is NaN.
    result = run_train(tiny_run_arguments(small_data, output, LEARNING_RATE=1e33, WARMUP_STEPS=1000, MAX_STEPS=40,
                                          EVAL_STEPS=1, SAVE_STEPS=1, LOGGING_STEPS=1, MAX_NONFINITE_STEPS=3,
                                          SAVE_TOTAL_LIMIT=2, GEN_EVAL_SAMPLES=4))
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "non-finite gradient norm (nan); update skipped (1 of 3" in result.stdout
    assert "Likely causes" in result.stdout and "PRECISION='bf16'" in result.stdout
    assert "Traceback" not in result.stderr
    stopped = int(re.search(r"in a row with NaN/inf loss or gradients at step (\d+)", result.stdout).group(1))
    checkpoints = sorted(int(path.name.split("-")[1]) for path in output.glob("checkpoint-*"))
    assert max(checkpoints) == stopped - 1  # the stopping step saved nothing
    best_step = trainer_state(output / f"checkpoint-{max(checkpoints)}")["best_global_step"]
    # Rotation kept the best checkpoint although newer ones were deleted, and best/ equals it.
    assert best_step in checkpoints and len(checkpoints) == 2 and best_step < max(checkpoints) - 1
    assert same_weights(output / "best", output / f"checkpoint-{best_step}")
    # latest/ holds the last good weights: finite, equal to the newest checkpoint's (bad steps change nothing).
    assert all(torch.isfinite(tensor).all() for tensor in weights(output / "latest").values())
    assert same_weights(output / "latest", output / f"checkpoint-{max(checkpoints)}")
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any(record.get("grad_norm") != record.get("grad_norm") for record in records), "NaN must be logged"


def test_full_disk_during_a_save_is_one_line_and_keeps_earlier_saves(start_train, tmp_path, small_data):
    output = tmp_path / "out"
    process = start_train(tiny_run_arguments(small_data, output, MAX_STEPS=5000, EVAL_STEPS=5, SAVE_STEPS=5,
                                             LOGGING_STEPS=1))
    wait_for(output / "train.log", r"step 7/")  # checkpoint-5 and best/ are complete
    # From now on no file may grow past 1 MB, so the next weights file fails to write: the
    # kernel's "File too large" stands in for "No space left on device".
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    assert process.wait(timeout=120) == 4
    log = console(tmp_path)
    error_lines = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "could not write" in error_lines[0] and "free disk space" in error_lines[0]
    assert "Traceback" not in log
    assert checkpoint_problem(output / "checkpoint-5") is None and not (output / "checkpoint-10").exists()
    assert learned(output / "best") and not (output / "best.tmp").exists()


def test_unwritable_output_dir_is_refused_before_anything_runs(run_train, tmp_path, small_data):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_train(tiny_run_arguments(small_data, blocker / "out"), timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: OUTPUT_DIR=") and "cannot be written" in result.stderr


def test_resume_reports_changed_batch_size_data_and_schedule(run_train, finished_run, tmp_path, small_data):
    output = copy_of(finished_run, tmp_path)
    changed_data = tmp_path / "train.jsonl"
    changed_data.write_text(small_data[0].read_text(encoding="utf-8") * 2, encoding="utf-8")
    changes = dict(TRAIN_FILE=changed_data, PER_DEVICE_BATCH_SIZE=4, MAX_STEPS=22, LEARNING_RATE=1e-4, LOGGING_STEPS=1)
    refused = run_train(tiny_run_arguments(small_data, output, RESUME_CHANGES="refuse", **changes))
    assert refused.returncode == 2, refused.stderr[-3000:]
    message = refused.stderr.strip().splitlines()[-1]  # after the tokenization progress bars
    assert message.startswith("error: ") and "Traceback" not in refused.stderr
    for phrase in ("effective_batch_size 8 -> 4", "training_data", "max_steps 20 -> 22", "RESUME_CHANGES='warn'"):
        assert phrase in message
    assert not (output / "checkpoint-22").exists()
    warned = run_train(tiny_run_arguments(small_data, output, **changes))
    assert warned.returncode == 0, warned.stderr[-3000:]
    assert "Changed since" in warned.stdout and "effective_batch_size 8 -> 4" in warned.stdout
    assert "learning_rate 0.001 -> 0.0001" in warned.stdout
    assert trainer_state(output / "checkpoint-22")["global_step"] == 22
    # The learning rate set now is used from the first resumed step on (not the checkpoint's).
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [record["learning_rate"] for record in records if record["step"] > 20 and "loss" in record] == [1e-4, 1e-4]


@pytest.mark.parametrize("changes, refused_says, warned_says, metric", [
    (dict(METRIC_FOR_BEST_MODEL="span_accuracy", MAX_STEPS=30),
     ["metric_for_best_model eval_loss -> eval_span_accuracy"],
     ["METRIC_FOR_BEST_MODEL changed from eval_loss (checkpoint) to eval_span_accuracy",
      "Early stopping: METRIC_FOR_BEST_MODEL changed",
      "Early stopping: active from now on; reference eval_span_accuracy"], "eval_span_accuracy"),
    # Fewer beams or other validation data change what span_accuracy means as well.
    (dict(NUM_BEAMS=2, GEN_EVAL_SAMPLES=8, MAX_STEPS=30),
     ["num_beams 4 -> 2", "gen_eval_samples 16 -> 8"],
     ["The evaluation changed since the checkpoint (gen_eval_samples 16 -> 8; num_beams 4 -> 2)",
      "Early stopping: the evaluation changed since the checkpoint",
      "Early stopping: active from now on; reference eval_loss"], "eval_loss"),
])
def test_a_changed_evaluation_is_reported_and_early_stopping_and_best_compare_afresh(
        run_train, finished_run, tmp_path, small_data, changes, refused_says, warned_says, metric):
    """Figures of another evaluation are not comparable: refused, or early stopping and best/ start over."""
    output = copy_of(finished_run, tmp_path)
    refused = run_train(tiny_run_arguments(small_data, output, RESUME_CHANGES="refuse", **changes))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert all(phrase in refused.stderr for phrase in refused_says), refused.stderr[-3000:]
    warned = run_train(tiny_run_arguments(small_data, output, **changes))
    assert warned.returncode == 0, warned.stdout[-3000:] + warned.stderr[-3000:]
    assert all(phrase in warned.stdout for phrase in warned_says), warned.stdout[-3000:]
    # An accuracy is never compared with a loss, nor a 2-beam figure with a 4-beam one: the first
    # evaluation of the new kind takes best/, better or not.
    record = json.loads((output / "best" / "best_model.json").read_text())
    assert record["metric"] == metric and record["step"] == 30


def test_two_processes_split_the_restorations_of_an_evaluation_and_agree_with_one(run_train, tmp_path, small_data,
                                                                                  hf_home):
    """Under torchrun each process restores half of GEN_EVAL_SAMPLES; the gathered metrics equal
    restore.py's on the same examples in a single process."""
    output = tmp_path / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547",
                str(ROOT / "train.py")]
    arguments = tiny_run_arguments(small_data, output, PER_DEVICE_BATCH_SIZE=4, MAX_STEPS=10, EVAL_STEPS=10,
                                   SAVE_STEPS=10, GEN_EVAL_SAMPLES=15)
    result = subprocess.run(torchrun + list(map(str, arguments)), cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=offline_environment(hf_home))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    [evaluation] = [record for record in logged if "eval_span_accuracy" in record]
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(small_data[1].read_text(encoding="utf-8").splitlines()[:15]) + "\n", encoding="utf-8")
    scored = subprocess.run([sys.executable, str(ROOT / "restore.py"), "--model", str(output / "checkpoint-10"),
                             "--input", str(subset), "--output", str(tmp_path / "restored.jsonl")],
                            capture_output=True, text=True, timeout=300, env=offline_environment(hf_home))
    assert scored.returncode == 0, scored.stderr[-3000:]
    metrics = json.loads(scored.stdout.strip().splitlines()[-1])
    assert metrics["examples"] == 15
    for name in ("span_accuracy", "char_accuracy", "exact_match"):
        assert metrics[name] == pytest.approx(evaluation[f"eval_{name}"], abs=1e-4)


def test_two_processes_stop_together_and_resume_in_one(start_train, run_train, tmp_path, small_data):
    output = tmp_path / "out"
    arguments = tiny_run_arguments(small_data, output, PER_DEVICE_BATCH_SIZE=4, MAX_STEPS=5000, EVAL_STEPS=5,
                                   SAVE_STEPS=5, LOGGING_STEPS=1)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                str(ROOT / "train.py"))
    launcher = start_train(arguments, command=torchrun)
    wait_for(output / "train.log", r"New best eval_loss")
    wait_for(output / "train.log", r"step (1[1-9]|[2-9]\d)/5000")
    launcher.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    launcher.wait(timeout=120)
    log = console(tmp_path)
    assert log.count("Latest weights (step") == 1, "only the main process writes latest/"
    stopped = int(re.search(r"Latest weights \(step (\d+)\)", log).group(1))
    assert checkpoint_problem(output / f"checkpoint-{stopped}") is None
    assert same_weights(output / "latest", output / f"checkpoint-{stopped}")
    assert learned(output / "best") and learned(output / "latest")
    assert not list(output.glob("*.tmp")) and not list(output.glob("*.old"))
    result = run_train(tiny_run_arguments(small_data, output, PER_DEVICE_BATCH_SIZE=8, MAX_STEPS=stopped + 2,
                                          EVAL_STEPS=5, SAVE_STEPS=5))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming from {output / f'checkpoint-{stopped}'}" in result.stdout
    assert "processes 2 -> 1" in result.stdout


def loads(folder):
    """from_pretrained accepts the folder (weights, config and tokenizer)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    AutoTokenizer.from_pretrained(folder)
    AutoModelForSeq2SeqLM.from_pretrained(folder)
    return True


def newest_complete_checkpoint(output):
    steps = [int(path.name.split("-")[1]) for path in output.glob("checkpoint-*") if not checkpoint_problem(path)]
    return max(steps, default=None)


@pytest.mark.slow
def test_twenty_interrupts_at_random_moments_lose_nothing(start_train, tmp_path, small_data):
    """Start, interrupt at a random moment (start-up, step, evaluation, save; sometimes twice),
    check what is on disk, start again: twenty times. Each start must resume at the newest
    complete checkpoint, which after a graceful stop is the step the stop reported."""
    output = tmp_path / "out"
    arguments = tiny_run_arguments(small_data, output, MAX_STEPS=5000, EVAL_STEPS=5, SAVE_STEPS=5, LOGGING_STEPS=1,
                                   EARLY_STOPPING_START_STEP=100000)
    chooser = random.Random(20261123)
    for attempt in range(20):
        before = newest_complete_checkpoint(output) if output.exists() else None
        process = start_train(arguments)
        if chooser.random() < 0.2:  # during start-up: loading, tokenizing
            time.sleep(chooser.uniform(0.5, 3.0))
        else:  # during training: a step, an evaluation or a save (every 5 steps)
            wait_for(tmp_path / "console.log", r"Training tiny-local-t5 on")
            time.sleep(chooser.uniform(0.0, 4.0))
        signal_number = chooser.choice([signal.SIGINT, signal.SIGTERM])
        process.send_signal(signal_number)
        if chooser.random() < 0.25:  # an impatient second press
            time.sleep(chooser.uniform(0.0, 0.5))
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
        log = console(tmp_path)
        assert code in (130, 143), f"attempt {attempt}: exit {code}\n{log[-3000:]}"
        assert "Traceback" not in log, f"attempt {attempt}\n{log[-3000:]}"
        beginning = re.search(r"Resuming from \S+\.$|Starting a fresh run", log, flags=re.M)
        if before is not None and beginning:  # (a signal in the first second comes before this line)
            assert beginning.group(0) == f"Resuming from {output / f'checkpoint-{before}'}.", f"attempt {attempt}"
        stopped = re.search(r"Latest weights \(step (\d+)\)", log)
        if stopped:  # a graceful stop: the checkpoint of that very step is the next starting point
            assert newest_complete_checkpoint(output) == int(stopped.group(1))
            assert (output / "latest").exists()
        for folder in ("best", "latest"):  # whatever exists loads: no save is ever half-written
            if (output / folder).exists():
                assert loads(output / folder), f"attempt {attempt}: {folder}/ does not load"
    assert loads(output / "best") and loads(output / "latest")
    assert newest_complete_checkpoint(output) > 20, "the interrupted runs made progress between them"
