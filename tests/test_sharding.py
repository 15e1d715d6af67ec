"""FSDP: train.py sharded over two CPU processes (gloo), as torchrun starts it. Every promise of a
single process holds: a signal to one process stops both at the same step with a resumable sharded
checkpoint, the resume ends on the very weights of an uninterrupted run, best/ and latest/ are full
weights any machine loads without FSDP, early stopping and best/ are decided once, and the
restoration metrics of an evaluation equal restore.py's in one process. Sharded training computes
what replicated training computes, and each process really holds only its share."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, offline_environment, same_weights, tiny_run_arguments, trainer_state, wait_for, weights

from benchmarks.sharding_check import worker
from domainfocus.checkpoints import checkpoint_problem


def torchrun(port):
    return (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
            str(ROOT / "train.py"))


def sharded_arguments(data, output, **overrides):
    settings = dict(FSDP="full_shard", PER_DEVICE_BATCH_SIZE=8, MAX_STEPS=30, LOGGING_STEPS=1, GEN_EVAL_SAMPLES=15,
                    SAVE_TOTAL_LIMIT=5)
    return tiny_run_arguments(data, output, **{**settings, **overrides})


def run_sharded(arguments, port, hf_home, command=None):
    result = subprocess.run([*(command or torchrun(port)), *map(str, arguments)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=offline_environment(hf_home))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def straight(tmp_path_factory, small_data, hf_home):
    """An uninterrupted sharded run of 30 steps (past the end of the first epoch, at step 19)."""
    output = tmp_path_factory.mktemp("sharded") / "straight"
    run_sharded(sharded_arguments(small_data, output), 29561, hf_home)
    return output


def test_a_signal_to_one_process_stops_both_with_full_weights_and_the_resume_is_exact(straight, start_train, tmp_path,
                                                                                      small_data, hf_home):
    output = tmp_path / "out"
    launcher = start_train(sharded_arguments(small_data, output), command=torchrun(29562))
    wait_for(output / "train.log", r"step 2[1-6]/30")  # in the second epoch: the resume skips into it
    os.kill(worker(launcher, 1), signal.SIGTERM)  # the other process only learns it from its peer
    launcher.wait(timeout=120)
    log = (tmp_path / "console.log").read_text(encoding="utf-8", errors="replace")
    assert log.count("Latest weights (step") == 1, log[-3000:]
    stopped = int(re.search(r"Latest weights \(step (\d+)\)", log).group(1))
    assert 21 <= stopped < 30
    checkpoint = output / f"checkpoint-{stopped}"
    assert checkpoint_problem(checkpoint) is None and trainer_state(checkpoint)["global_step"] == stopped
    assert sorted(path.name for path in (checkpoint / "sharded").iterdir()) == [".metadata", "__0_0.distcp",
                                                                                "__1_0.distcp"]
    assert "Traceback" not in log.split("Latest weights")[0]  # (torchrun's own report of the exit code follows)
    # latest/ is the full model at the step both processes stopped at, read by plain transformers.
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(output / "latest")
    assert all(not isinstance(parameter.data, torch.distributed.tensor.DTensor) for parameter in model.parameters())
    assert same_weights(output / "latest", checkpoint)
    assert weights(output / "latest").keys() == weights(straight / "latest").keys()
    # Each process's file holds about half of the weights and AdamW state (12 bytes per parameter).
    state_bytes = 12 * sum(parameter.numel() for parameter in model.parameters())
    sizes = [(checkpoint / "sharded" / f"__{rank}_0.distcp").stat().st_size for rank in (0, 1)]
    assert all(0.4 * state_bytes < size < 0.6 * state_bytes for size in sizes), (sizes, state_bytes)

    run_sharded(sharded_arguments(small_data, output), 29563, hf_home)
    assert same_weights(output / "latest", straight / "latest")  # bit for bit
    assert json.loads((output / "best" / "best_model.json").read_text()) == \
        json.loads((straight / "best" / "best_model.json").read_text())


def test_sharded_training_computes_what_replicated_training_computes(straight, tmp_path, small_data, hf_home):
    replicated = tmp_path / "replicated"
    run_sharded(sharded_arguments(small_data, replicated, FSDP="", MAX_STEPS=10, GEN_EVAL_SAMPLES=0), 29564, hf_home)
    sharded, whole = weights(straight / "checkpoint-10"), weights(replicated / "checkpoint-10")
    assert sharded.keys() == whole.keys()
    assert max((sharded[name] - whole[name]).abs().max().item() for name in whole) < 1e-5
    assert sum((sharded[name] - weights(straight / "checkpoint-30")[name]).abs().sum() for name in whole) > 1


def test_an_mt5_run_sharded_evaluates_stops_early_and_restores_as_restore_py_does(tmp_path, mt5_folder, clinical_data,
                                                                                   hf_home):
    """The mT5-shaped model (untied LM head, SentencePiece); early stopping that must stop both
    processes at step 20; the evaluation's restoration metrics against restore.py's in one process."""
    output = tmp_path / "out"
    # 17 examples restored 4 at a time: 9 and 8 per process, in 3 and 2 batches, so one process decodes
    # one batch more than the other; two micro-batches per optimizer step, the first kept unreduced.
    result = run_sharded(sharded_arguments(clinical_data, output, MODEL_NAME_OR_PATH=mt5_folder, LEARNING_RATE=3e-3,
                                           MAX_STEPS=60, EARLY_STOPPING_PATIENCE=1, EARLY_STOPPING_THRESHOLD=100,
                                           PER_DEVICE_BATCH_SIZE=2, GRADIENT_ACCUMULATION_STEPS=2,
                                           GEN_EVAL_SAMPLES=17), 29565, hf_home)
    assert "early stopping" in result.stdout.lower() and trainer_state(output / "checkpoint-20")["global_step"] == 20
    assert not (output / "checkpoint-30").exists()
    best = weights(output / "best")
    assert "lm_head.weight" in best and not torch.equal(best["lm_head.weight"], best["shared.weight"])
    assert same_weights(output / "best", output / "checkpoint-20")
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    [evaluation] = [record for record in logged if record.get("step") == 20 and "eval_span_accuracy" in record]
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(clinical_data[1].read_text(encoding="utf-8").splitlines()[:17]) + "\n",
                      encoding="utf-8")
    scored = subprocess.run([sys.executable, str(ROOT / "restore.py"), "--model", str(output / "checkpoint-20"),
                             "--input", str(subset), "--output", str(tmp_path / "restored.jsonl")],
                            capture_output=True, text=True, timeout=300, env=offline_environment(hf_home))
    assert scored.returncode == 0, scored.stderr[-3000:]
    metrics = json.loads(scored.stdout.strip().splitlines()[-1])
    assert metrics["examples"] == 17 and metrics["span_accuracy"] + metrics["char_accuracy"] > 0
    for name in ("span_accuracy", "char_accuracy", "exact_match"):
        assert metrics[name] == pytest.approx(evaluation[f"eval_{name}"], abs=1e-4)


def test_a_sharded_checkpoint_is_not_resumed_unsharded_and_the_other_way_round(straight, finished_run, tmp_path,
                                                                              small_data, hf_home):
    """The optimizer state of one kind of checkpoint cannot be read by the other kind of run: refused in
    one line, before anything loads, rather than resumed with a fresh optimizer."""
    sharded, whole = straight / "checkpoint-30", finished_run[0] / "checkpoint-20"
    for checkpoint, fsdp, processes in ((sharded, "", "1"), (sharded, "full_shard", "1"), (whole, "full_shard", "2")):
        result = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, sharded_arguments(
            small_data, tmp_path / "out", FSDP=fsdp, RESUME=checkpoint))], cwd=ROOT, capture_output=True, text=True,
            timeout=120, env={**offline_environment(hf_home), "WORLD_SIZE": processes})
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
        assert "cannot be resumed with FSDP" in result.stderr


def test_check_plans_memory_per_gpu_of_the_shard_group(tmp_path, hf_home):
    def plan(*arguments, **environment):  # (an OUTPUT_DIR of its own: runs/demo may hold a demo run to resume)
        result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--check", "--demo",
                                 "--OPTIMIZER=adamw_torch", f"--OUTPUT_DIR={tmp_path / 'out'}", *arguments], cwd=ROOT,
                                capture_output=True, text=True,
                                timeout=120, env={**offline_environment(hf_home), **environment})
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout

    sharded, text = plan("--FSDP=full_shard", WORLD_SIZE="4", LOCAL_WORLD_SIZE="4")
    hybrid, _ = plan("--FSDP=hybrid_shard", WORLD_SIZE="8", LOCAL_WORLD_SIZE="4")  # sharded within each machine
    assert (sharded["shard_group"], hybrid["shard_group"]) == (4, 4)
    assert sharded["weights_bytes"] == sharded["gradients_bytes"] == pytest.approx(4 * sharded["parameters"] / 4, abs=1)
    assert sharded["optimizer_state_bytes"] == pytest.approx(8 * sharded["parameters"] / 4, rel=0.01)
    for name in ("weights_bytes", "gradients_bytes", "optimizer_state_bytes"):
        assert sharded[name] == hybrid[name]
    assert sharded["gathered_weights_bytes"] > 0 and sharded["evaluation_bytes"] > 0
    assert "per GPU with FSDP='full_shard' sharded over 4" in text


@pytest.mark.parametrize("setting, named", [("--OPTIMIZER=adafactor", "OPTIMIZER='adafactor'"),
                                            ("--LORA_RANK=8", "LORA_RANK=8"),
                                            ("--PRECISION=fp16", "PRECISION='fp16'"),
                                            ("--TORCH_COMPILE=True", "TORCH_COMPILE=True")])
def test_what_sharding_cannot_carry_is_refused_in_one_line(setting, named, tmp_path, hf_home):
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--demo", "--FSDP=full_shard", setting,
                             f"--OUTPUT_DIR={tmp_path / 'out'}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, env=offline_environment(hf_home))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
    assert time.monotonic() - started < 20 and not (tmp_path / "out").exists()
