"""What users see: the curves picture, the plan before a run, the model card, the final summary."""

import json
import re
import shutil
import struct

import pytest

from conftest import tiny_run_arguments, write_lines


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, len(data)


def test_curves_are_drawn_during_a_run_and_redrawn_by_plot(finished_run, run_train, tmp_path):
    output, _ = finished_run
    width, height, size = png_size(output / "training_curves.png")
    assert 600 <= width <= 2000 and 400 <= height <= 2000 and size > 20_000
    copy = tmp_path / "interrupted-run"
    shutil.copytree(output, copy)
    (copy / "training_curves.png").unlink()
    result = run_train(["--plot", copy], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert png_size(copy / "training_curves.png")[:2] == (width, height)
    assert run_train(["--plot", tmp_path / "nothing-here"], timeout=120).returncode == 2


def test_model_card_states_the_best_metric_from_metrics_jsonl(finished_run):
    output, _ = finished_run
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    evaluations = [record for record in records if "eval_loss" in record]
    best = min(evaluations, key=lambda record: record["eval_loss"])
    card = (output / "best" / "README.md").read_text(encoding="utf-8")
    assert f"eval_loss {best['eval_loss']:.4f} at step {best['step']}" in card
    assert f"| eval_span_accuracy | {best['eval_span_accuracy']:.4f} |" in card
    assert "python restore.py --model" in card and "tiny-local-t5" in card


def test_summary_tells_how_to_resume_and_use_the_model(finished_run):
    _, result = finished_run
    assert "Resume: python train.py --demo" in result.stdout
    assert "Use: python restore.py --model" in result.stdout


def test_check_prints_the_plan_and_writes_nothing(run_train, tmp_path, small_data):
    output = tmp_path / "out"
    result = run_train(tiny_run_arguments(small_data, output, MAX_STEPS=200, EVAL_STEPS=10, SAVE_STEPS=20,
                                          EARLY_STOPPING_START_STEP=45, EARLY_STOPPING_PATIENCE=4) + ["--check"],
                       timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    # 300 examples, batch 8 -> 38 steps per epoch; evaluations every 10 steps; the first counted
    # evaluation is at step 50, so patience 4 can stop the run at step 90 at the earliest.
    assert "38 optimizer steps per epoch, 200 in total" in result.stdout
    assert "20 evaluations (every 10 steps), 10 checkpoints (every 20 steps)" in result.stdout
    assert "can first stop the run at step 90" in result.stdout
    assert re.search(r"train      300 examples, [\d,]+ input and [\d,]+ target tokens; truncated: 0 inputs, "
                     r"0 targets", result.stdout)
    assert "for weights, gradients and adafactor state" not in result.stdout  # the demo uses AdamW
    assert "adamw_torch state" in result.stdout and "Ready" in result.stdout
    assert not output.exists()
    plan = json.loads(result.stdout.strip().splitlines()[-1])  # the memory plan for scripts
    assert plan["effective_batch_size"] == 8 and plan["fits"] is True
    assert plan["total_bytes"] == sum(plan[name] for name in ("weights_bytes", "gradients_bytes", "optimizer_state_bytes",
                                                                "activations_bytes", "cuda_context_bytes"))


def test_check_plans_an_untied_head_and_counts_processes(run_train, untied_mt5_folder, tmp_path, small_data):
    from transformers import AutoModelForSeq2SeqLM

    loaded = AutoModelForSeq2SeqLM.from_pretrained(untied_mt5_folder)
    arguments = tiny_run_arguments(small_data, tmp_path / "out", MODEL_NAME_OR_PATH=untied_mt5_folder) + ["--check"]
    result = run_train(arguments, timeout=180, environment={"WORLD_SIZE": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    assert plan["parameters"] == loaded.num_parameters()  # the separate LM head included
    assert plan["weights_bytes"] == 4 * loaded.num_parameters() and plan["gradients_bytes"] == plan["weights_bytes"]
    assert plan["effective_batch_size"] == 16 and "(effective batch 16 over 2 processes)" in result.stdout


def test_check_names_the_problem_with_bad_data(run_train, tmp_path, small_data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"inputs": "x"}\n', encoding="utf-8")
    result = run_train(tiny_run_arguments((bad, small_data[1]), tmp_path / "out") + ["--check"], timeout=120)
    assert result.returncode == 2
    assert f'{bad}:1: no "targets" field' in result.stderr


def test_tensorboard_logs_locally_when_switched_on(run_train, tmp_path, small_data):
    output = tmp_path / "out"
    result = run_train(tiny_run_arguments(small_data, output, MAX_STEPS=5, EVAL_STEPS=5, SAVE_STEPS=5,
                                          TENSORBOARD=True))
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))


def test_live_bar_in_a_terminal_clean_lines_in_the_log(tmp_path, small_data, hf_home):
    import fcntl
    import os
    import pty
    import termios
    import subprocess
    import sys

    from conftest import ROOT, offline_environment

    output = tmp_path / "out"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))  # a terminal window's size
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"),
                                *tiny_run_arguments(small_data, output, MAX_STEPS=10, EVAL_STEPS=10, SAVE_STEPS=10)],
                               cwd=ROOT, stdout=follower, stderr=follower, env=offline_environment(hf_home))
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        screen += chunk
    assert process.wait(timeout=300) == 0
    os.close(leader)
    text = screen.decode("utf-8", errors="replace")
    assert re.search(r"\r.*\d+/10 \[", text), "a live progress bar in the terminal"
    assert "step 10/10 (100.0%)" in text
    log = (output / "train.log").read_text(encoding="utf-8")
    assert "step 10/10 (100.0%)" in log and "\r" not in log and "it/s" not in log and "step/s" not in log


@pytest.fixture(scope="module")
def untied_mt5_folder(finished_run, tmp_path_factory):
    """A small mT5-shaped model saved as published mT5 is: a separate LM head, "tie_word_embeddings": false."""
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer, MT5Config, MT5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("untied-mt5")
    tokenizer = AutoTokenizer.from_pretrained(finished_run[0] / "best")
    torch.manual_seed(0)
    model = MT5ForConditionalGeneration(MT5Config(vocab_size=len(tokenizer), d_model=64, d_ff=128, num_layers=2,
                                                  num_heads=2, d_kv=32, decoder_start_token_id=0))
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with safe_open(str(folder / "model.safetensors"), "pt") as weights_file:
        assert "lm_head.weight" in weights_file.keys()
    return folder


@pytest.mark.parametrize("optimizer", ["adamw_torch", "adafactor"])
@pytest.mark.parametrize("kind", ["tied demo T5", "untied mT5"])
def test_memory_planner_static_figures_equal_the_real_tensors_after_a_step(finished_run, untied_mt5_folder, tmp_path,
                                                                            optimizer, kind):
    """Weights, gradients and optimizer state as the planner computes them from shapes on the meta
    device equal, byte for byte, what one real training step allocates on CPU, also for a model
    whose LM head is its own (mT5, T5 v1.1), which transformers 5 ties when built from a config."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from domainfocus.modeling import load_model
    from domainfocus.memory import static_memory

    folder = str(finished_run[0] / "best" if kind == "tied demo T5" else untied_mt5_folder)
    _, shapes = load_model(folder, None, None, None, None, 0, weights=False)
    planned = static_memory(shapes, optimizer)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), optim=optimizer, report_to="none", use_cpu=True)
    trainer = Seq2SeqTrainer(model=model, args=args, processing_class=tokenizer)
    optimizer_object = trainer.create_optimizer()
    batch = tokenizer(["患者因<extra_id_0>入院。"], text_target=["<extra_id_0>胸痛<extra_id_1>"], return_tensors="pt")
    model(**batch).loss.backward()
    parameters = list(model.parameters())
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in parameters)
    optimizer_object.step()
    state = sum(value.numel() * value.element_size() for per_parameter in optimizer_object.state.values()
                for value in per_parameter.values() if isinstance(value, torch.Tensor))
    assert (model.lm_head.weight is model.shared.weight) == (kind == "tied demo T5")
    assert planned["weights"] == sum(p.numel() * p.element_size() for p in parameters)
    assert planned["gradients"] == gradients
    assert planned["optimizer state"] == state


def test_memory_plan_names_changes_that_fit(finished_run):
    from domainfocus.modeling import load_model
    from domainfocus.memory import memory_plan
    from train import default_config

    _, shapes = load_model(str(finished_run[0] / "best"), None, None, None, None, 0, weights=False)
    config = {**default_config(), "OPTIMIZER": "adamw_torch", "GRADIENT_CHECKPOINTING": False,
              "PER_DEVICE_BATCH_SIZE": 64}
    lines, fits = memory_plan(shapes, config, lengths=(512, 256))
    assert fits and "GPU memory estimate" in lines[0]
    lines, fits = memory_plan(shapes, {**config, "GPU_MEMORY_GB": 0.9}, lengths=(512, 256))
    assert not fits and lines[1].startswith("It will not fit in 0.9 GB. Changes that fit: --")


def test_curves_follow_the_data_when_early_stopping_starts_far_beyond_it():
    """A start step of a million must not squeeze 2,000 steps into a sliver; a first loss of 30 must not
    flatten the later changes."""
    from domainfocus.curves import draw_curves

    steps = range(10, 2001, 10)
    series = {"loss": {step: 30 / (1 + step / 10) for step in steps},
              "eval_loss": {step: 20 / (1 + step / 10) for step in steps if step % 100 == 0},
              "learning_rate": {step: 1e-3 for step in steps}}
    figure = draw_curves(series, early_stopping_start_step=1_000_000)
    loss_axis = figure.axes[0]
    left, right = loss_axis.get_xlim()
    assert left < 10 and 2000 < right < 2100
    assert loss_axis.get_yscale() == "log"
    legend = [text.get_text() for text in loss_axis.get_legend().get_texts()]
    assert "early stopping starts at step 1000000 (not reached)" in legend
    within = draw_curves(series, early_stopping_start_step=500)
    assert any(line.get_xdata()[0] == 500 for line in within.axes[0].get_lines() if len(line.get_xdata()) == 2)


def test_check_and_training_count_validation_that_the_training_data_already_holds(run_train, tmp_path, small_data):
    """Figures measured on examples the model trained on measure memory: --check counts them (the
    same text, and alike but for digits and punctuation) and training warns."""
    train_file, valid_file = small_data
    lines = train_file.read_text(encoding="utf-8").splitlines()
    # 20 copied from training; 10 of those again with half-width commas and other numbers (outside the
    # sentinels), which makes them alike where they hold a number and the same text where they do not.
    alike = []
    for line in lines[:10]:
        example = json.loads(line)
        example["inputs"] = re.sub(r"(?<![\d_])\d+", lambda match: str(int(match.group()) + 1000),
                                   example["inputs"].replace("，", ","))
        alike.append(json.dumps(example, ensure_ascii=False))
    numbered = sum(bool(re.search(r"(?<![\d_])\d", json.loads(line)["inputs"])) for line in lines[:10])
    leaked = write_lines(tmp_path / "leaked.jsonl", lines[:20] + alike + valid_file.read_text(encoding="utf-8").splitlines())
    result = run_train(tiny_run_arguments((train_file, leaked), tmp_path / "out") + ["--check"], timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 < numbered < 10
    assert plan["valid_in_training"] == 20 + (10 - numbered)
    assert plan["valid_near_training"] >= 30
    assert f"also in training: {plan['valid_in_training']}" in result.stdout
    assert "figures measured on them show memory" in result.stdout + result.stderr
    clean = run_train(tiny_run_arguments(small_data, tmp_path / "out") + ["--check"], timeout=180)
    assert json.loads(clean.stdout.strip().splitlines()[-1])["valid_in_training"] == 0
