"""End to end: a short run leaves loadable best/ and latest/, resumes where it stopped, and survives Ctrl+C."""

import json
import random
import re
import shutil
import signal

import pytest

from conftest import learned, same_weights, tiny_run_arguments, trainer_state, wait_for, write_lines


def test_run_writes_loadable_best_and_latest(finished_run):
    output, result = finished_run
    for name in ("best", "latest", "checkpoint-20", "metrics.jsonl", "train.log", "run_config.json"):
        assert (output / name).exists(), name
    assert learned(output / "best") and learned(output / "latest")
    assert not list((output / "best").glob("*.bin")), "best/ must hold safetensors only"
    assert same_weights(output / "latest", output / "checkpoint-20")
    assert "Summary: 20 steps this run" in result.stdout


def test_best_is_the_best_evaluated_model_not_the_last(finished_run):
    output, _ = finished_run
    state = trainer_state(output / "checkpoint-20")
    evaluations = {entry["step"]: entry["eval_loss"] for entry in state["log_history"] if "eval_loss" in entry}
    best_step = min(evaluations, key=evaluations.get)
    assert state["best_global_step"] == best_step
    assert same_weights(output / "best", output / f"checkpoint-{best_step}")


def test_records_of_the_run(finished_run):
    output, result = finished_run
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "eval_loss" in record] == [10, 20]
    assert [record["step"] for record in records if "loss" in record] == [5, 10, 15, 20]
    evaluations = [record for record in records if "eval_loss" in record]
    assert all(0 <= record[f"eval_{name}"] <= 1 for record in evaluations
               for name in ("span_accuracy", "char_accuracy", "exact_match"))
    log = (output / "train.log").read_text(encoding="utf-8")
    assert "\r" not in log
    assert re.search(r"step 20/20 \(100\.0%\) \| epoch [\d.]+ \| loss [\d.]+ \| lr [\d.e+-]+ \|", log)
    config = json.loads((output / "run_config.json").read_text())
    assert config["constants"]["MAX_STEPS"] == 20 and config["effective_batch_size"] == 8
    assert "Traceback" not in result.stderr
    assert "Tokenizing train" in result.stderr  # the first start tokenizes; later ones reuse it


def test_running_again_resumes_from_the_saved_step(finished_run, run_train, tmp_path, small_data):
    output = tmp_path / "out"
    shutil.copytree(finished_run[0], output)
    result = run_train(tiny_run_arguments(small_data, output, MAX_STEPS=30))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming from {output / 'checkpoint-20'}" in result.stdout
    assert "Summary: 10 steps this run (30 in total)" in result.stdout
    assert trainer_state(output / "checkpoint-30")["global_step"] == 30
    assert "Early stopping state restored" in result.stdout
    assert "Tokenizing" not in result.stderr, "a second start must reuse the cached tokenization"


def test_a_local_model_folder_trains_offline(finished_run, run_train, tmp_path, small_data):
    model_folder = finished_run[0] / "best"
    result = run_train(tiny_run_arguments(small_data, tmp_path / "out", MODEL_NAME_OR_PATH=model_folder,
                                          MAX_STEPS=5, EVAL_STEPS=5, SAVE_STEPS=5))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Training {model_folder} on 300 examples" in result.stdout
    assert learned(tmp_path / "out" / "latest")


def test_the_demo_model_trains_on_text_with_thousands_of_distinct_characters(run_train, tmp_path):
    """Real Chinese medical text has thousands of distinct characters; the tiny tokenizer must fit them all."""
    rng = random.Random(0)
    characters = [chr(code) for code in range(0x4E00, 0x4E00 + 3000)]
    for name, count in (("train", 400), ("valid", 20)):
        write_lines(tmp_path / f"{name}.jsonl", [json.dumps(
            {"inputs": "".join(rng.choices(characters, k=20)) + "<extra_id_0>" + "".join(rng.choices(characters, k=20)),
             "targets": "<extra_id_0>" + "".join(rng.choices(characters, k=4)) + "<extra_id_1>"}, ensure_ascii=False)
            for _ in range(count)])
    assert len(set((tmp_path / "train.jsonl").read_text(encoding="utf-8"))) > 2500
    result = run_train(["--demo", f"--TRAIN_FILE={tmp_path / 'train.jsonl'}", f"--VALID_FILE={tmp_path / 'valid.jsonl'}",
                        f"--OUTPUT_DIR={tmp_path / 'out'}", "--MAX_STEPS=2", "--EVAL_STEPS=2", "--SAVE_STEPS=2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "best")
    texts = [json.loads(line)["inputs"] for line in (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert not any(tokenizer.unk_token_id in ids for ids in tokenizer(texts)["input_ids"])  # every character kept


def test_fresh_start_refuses_to_overwrite_a_run(finished_run, run_train, small_data):
    output, _ = finished_run
    result = run_train(tiny_run_arguments(small_data, output, RESUME="None"), timeout=120)
    assert result.returncode == 2
    assert "already holds a run" in result.stderr and "OVERWRITE_OUTPUT_DIR" in result.stderr


@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_saves_loadable_weights_and_resumes(start_train, run_train, tmp_path, small_data,
                                                      signal_number, exit_code):
    output = tmp_path / "out"
    process = start_train(tiny_run_arguments(small_data, output, MAX_STEPS=5000, EVAL_STEPS=5, SAVE_STEPS=5,
                                             LOGGING_STEPS=1))
    wait_for(output / "train.log", r"New best eval_loss")
    wait_for(output / "train.log", r"step (1[1-9]|[2-9]\d)/5000")  # past the first evaluation, mid-training
    process.send_signal(signal_number)
    assert process.wait(timeout=120) == exit_code
    console = (tmp_path / "console.log").read_text()
    name = signal.Signals(signal_number).name
    assert f"{name} received" in console and f"interrupted by {name}" in console
    assert "Traceback" not in console
    stopped_at = int(re.search(r"Latest weights \(step (\d+)\)", console).group(1))
    assert trainer_state(output / f"checkpoint-{stopped_at}")["global_step"] == stopped_at
    assert same_weights(output / "latest", output / f"checkpoint-{stopped_at}")
    assert learned(output / "latest") and learned(output / "best")
    if signal_number == signal.SIGTERM:
        return  # resuming after either signal is the same code path; SIGINT's case checks it
    # Running the same command again continues from the step the interrupt saved.
    result = run_train(tiny_run_arguments(small_data, output, MAX_STEPS=stopped_at + 2, EVAL_STEPS=5,
                                          SAVE_STEPS=5, LOGGING_STEPS=1))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming from {output / f'checkpoint-{stopped_at}'}" in result.stdout
    assert "Summary: 2 steps this run" in result.stdout


def test_running_a_finished_run_again_trains_nothing(finished_run, run_train, tmp_path, small_data):
    output = tmp_path / "out"
    shutil.copytree(finished_run[0], output)
    result = run_train(tiny_run_arguments(small_data, output))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to train" in result.stdout and "already reached step 20 of 20" in result.stdout
    assert not (output / "checkpoint-21").exists()
    assert same_weights(output / "latest", finished_run[0] / "latest")


def test_early_stopping_stops_saves_and_a_larger_patience_continues(run_train, tmp_path, small_data):
    output = tmp_path / "out"
    # No improvement can exceed a threshold of 100: the evaluation at step 10 sets the reference,
    # the one at step 20 is the first without improvement, and patience 1 stops there.
    arguments = dict(MAX_STEPS=60, EARLY_STOPPING_START_STEP=10, EARLY_STOPPING_THRESHOLD=100.0,
                     EARLY_STOPPING_PATIENCE=1)
    result = run_train(tiny_run_arguments(small_data, output, **arguments))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped: early stopping at step 20" in result.stdout
    assert trainer_state(output / "checkpoint-20")["global_step"] == 20
    again = run_train(tiny_run_arguments(small_data, output, **arguments))
    assert "Nothing to train" in again.stdout and "raise EARLY_STOPPING_PATIENCE" in again.stdout
    arguments["EARLY_STOPPING_PATIENCE"] = 2
    longer = run_train(tiny_run_arguments(small_data, output, **arguments))
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "patience changed from 1 (checkpoint) to 2" in longer.stdout
    assert "stopped: early stopping at step 30" in longer.stdout


def test_plain_text_pairs_without_sentinels_train_and_score_whole_sequences(run_train, tmp_path):
    pairs = [{"inputs": f"患者{i}岁，因胸痛入阮，给予阿司匹林治疔。", "targets": f"患者{i}岁，因胸痛入院，给予阿司匹林治疗。"}
             for i in range(18, 90)]
    lines = "\n".join(json.dumps(pair, ensure_ascii=False) for pair in pairs)
    (tmp_path / "train.jsonl").write_text(lines, encoding="utf-8")
    (tmp_path / "valid.jsonl").write_text(lines, encoding="utf-8")
    result = run_train(tiny_run_arguments((tmp_path / "train.jsonl", tmp_path / "valid.jsonl"), tmp_path / "out",
                                          MAX_STEPS=5, EVAL_STEPS=5, SAVE_STEPS=5, GEN_EVAL_SAMPLES=8))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_exact_match" in record and "eval_char_accuracy" in record for record in records)


def test_overwrite_starts_over_with_a_fresh_log(finished_run, run_train, tmp_path, small_data):
    output = tmp_path / "out"
    shutil.copytree(finished_run[0], output)
    result = run_train(tiny_run_arguments(small_data, output, RESUME="None", OVERWRITE_OUTPUT_DIR=True,
                                          MAX_STEPS=5, EVAL_STEPS=5, SAVE_STEPS=5))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (output / "checkpoint-20").exists() and (output / "checkpoint-5").exists()
    log = (output / "train.log").read_text(encoding="utf-8")
    assert "Starting a fresh run" in log.splitlines()[0] and "step 20/20" not in log


def test_batches_are_grouped_by_length_from_a_precomputed_list(finished_run, tmp_path):
    # transformers 5.23 gives the sampler the lazy length column, read one row per lookup: minutes
    # of start-up on a large corpus. The trainer must pass a plain list, and group by it.
    import datasets
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, Seq2SeqTrainingArguments

    from domainfocus.trainer import DomainFocusTrainer

    lengths = [(index * 37) % 200 + 1 for index in range(512)]
    data = datasets.Dataset.from_dict({"input_ids": [[5] * n for n in lengths], "labels": [[5]] * 512,
                                       "length": lengths})
    best = finished_run[0] / "best"
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True,
                                    train_sampling_strategy="group_by_length", length_column_name="length",
                                    report_to="none", seed=0)
    trainer = DomainFocusTrainer(model=AutoModelForSeq2SeqLM.from_pretrained(best), args=args, train_dataset=data,
                                   processing_class=AutoTokenizer.from_pretrained(best))
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler.lengths, list) and sampler.lengths == lengths
    order = list(sampler)
    assert sorted(order) == list(range(512))
    batches = [[lengths[i] for i in order[k:k + 8]] for k in range(0, 512, 8)]
    spread = [max(batch) - min(batch) for batch in batches]
    assert sum(spread) / len(spread) < 30, "batches of 8 mix short and long examples"  # random order: about 150
    # ... and the batches come in random order, not from the longest to the shortest within each
    # group of 16 batches as transformers' sampler gives them (60 of 63 steps downwards).
    downwards = sum(max(later) < max(earlier) for earlier, later in zip(batches, batches[1:]))
    assert downwards < 0.8 * (len(batches) - 1)
    assert max(batches[0]) == max(lengths), "the longest batch comes first, so running out of memory shows at once"


def test_shuffled_batch_order_keeps_every_batch_whole():
    import torch

    from domainfocus.trainer import shuffled_batch_order

    indices = list(range(100, 203))  # 10 batches of 10 and a short one of 3
    order = shuffled_batch_order(indices, 10, torch.Generator().manual_seed(1))
    assert sorted(order) == indices and order != indices
    batches = [order[k:k + 10] for k in range(0, 103, 10)]
    assert batches[0] == indices[:10] and batches[-1] == indices[100:]
    assert sorted(map(tuple, batches)) == sorted(tuple(indices[k:k + 10]) for k in range(0, 103, 10))
    assert order == shuffled_batch_order(indices, 10, torch.Generator().manual_seed(1))
    assert shuffled_batch_order([], 10) == [] and shuffled_batch_order([5, 6], 10) == [5, 6]


def test_speed_knob_constants_reach_the_trainer(tmp_path):
    import train
    import domainfocus.trainer as trainer

    config = {**train.default_config(), "OUTPUT_DIR": str(tmp_path), "TORCH_COMPILE": True, "DATALOADER_WORKERS": 2}
    args = trainer.training_arguments(config, {})
    assert args.torch_compile and args.torch_compile_backend == "inductor" and args.dataloader_num_workers == 2
    assert not trainer.training_arguments({**config, "TORCH_COMPILE": False}, {}).torch_compile


def test_knob_benchmark_measures_speed_after_the_compiling_steps():
    from benchmarks.speed import after_compilation

    # 10 s of compiling, then 100 steps of 0.1 s with 1000 tokens each: 10,000 tokens/s after compiling.
    timeline = [(0.0, 0), (10.0, 1000)] + [(10.0 + 0.1 * k, 1000 + 1000 * k) for k in range(1, 101)]
    assert after_compilation(timeline) == pytest.approx(10_000)
    assert after_compilation(timeline[:40]) is None  # too few steps after compiling to tell


def test_an_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(start_train, run_train, tmp_path,
                                                                               small_data):
    """Data order (also in the middle of a later epoch), dropout, random state, scheduler and the
    loss of the progress line in progress all continue exactly: same weights, same losses."""
    settings = dict(MAX_STEPS=50, EVAL_STEPS=10, SAVE_STEPS=10, LOGGING_STEPS=3)  # 38 steps per epoch
    straight = run_train(tiny_run_arguments(small_data, tmp_path / "straight", **settings))
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    output = tmp_path / "interrupted"
    process = start_train(tiny_run_arguments(small_data, output, **settings))
    wait_for(tmp_path / "console.log", r"step 42/50")  # past the epoch boundary, between two checkpoints
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    resumed_from = max(int(folder.name.split("-")[1]) for folder in output.glob("checkpoint-*"))
    assert 42 < resumed_from < 50 and resumed_from % 3, resumed_from  # a progress line's steps half done
    resumed = run_train(tiny_run_arguments(small_data, output, **settings))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"Resuming from {output / f'checkpoint-{resumed_from}'}" in resumed.stdout
    assert same_weights(output / "latest", tmp_path / "straight" / "latest")

    def losses(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {(record["step"], key): value for record in records for key, value in record.items()
                if key in ("loss", "eval_loss") and record["step"] > resumed_from}

    after = losses(output)
    assert after == losses(tmp_path / "straight") and (50, "eval_loss") in after and (45, "loss") in after
