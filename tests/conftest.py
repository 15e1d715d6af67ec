"""Shared fixtures: small data files cut from the bundled demo, and a helper that runs train.py.

Run the suite with:  python -m pytest tests
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_lines(path, lines):
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """300 training and 60 validation examples from the demo set: fast to tokenize and train on."""
    folder = tmp_path_factory.mktemp("data")
    train_lines = (ROOT / "demo" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    valid_lines = (ROOT / "demo" / "valid.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    return write_lines(folder / "train.jsonl", train_lines), write_lines(folder / "valid.jsonl", valid_lines)


def offline_environment(home):
    environment = dict(os.environ)
    environment.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                       PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return environment


def tiny_run_arguments(small_data, output_dir, **overrides):
    """Command-line overrides for a short run of the tiny model on the small data."""
    train_file, valid_file = small_data
    settings = dict(TRAIN_FILE=train_file, VALID_FILE=valid_file, OUTPUT_DIR=output_dir, PER_DEVICE_BATCH_SIZE=8,
                    MAX_STEPS=20, EVAL_STEPS=10, SAVE_STEPS=10, LOGGING_STEPS=5, WARMUP_STEPS=2,
                    EARLY_STOPPING_START_STEP=0, GEN_EVAL_SAMPLES=16)
    settings.update(overrides)
    return ["--demo"] + [f"--{name}={value}" for name, value in settings.items()]


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory):
    """One Hugging Face cache for the whole session, so tokenization caches carry across runs."""
    return tmp_path_factory.mktemp("hf-home")


def run_train_process(arguments, hf_home, timeout=300, environment=None):
    """Run `python train.py ARGS...` offline; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, arguments)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**offline_environment(hf_home), **(environment or {})})


@pytest.fixture
def run_train(hf_home):
    return lambda arguments, timeout=300, environment=None: run_train_process(arguments, hf_home, timeout,
                                                                                environment)


@pytest.fixture
def start_train(tmp_path, hf_home):
    """Start `python train.py ARGS...` (or another command) in the background; returns the Popen.

    Its output goes to tmp_path/console.log; `environment` adds variables, `command` replaces
    `python train.py` (for torchrun).
    """
    processes = []

    def start(arguments, environment=None, command=(sys.executable, str(ROOT / "train.py"))):
        log = open(tmp_path / "console.log", "w")
        process = subprocess.Popen([*command, *map(str, arguments)], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, text=True,
                                   env={**offline_environment(hf_home), **(environment or {})})
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, small_data, hf_home):
    """One 20-step run of the tiny model, evaluated and saved every 10 steps: (OUTPUT_DIR, process)."""
    output = tmp_path_factory.mktemp("run") / "out"
    result = run_train_process(tiny_run_arguments(small_data, output), hf_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result


# --- checks on what a run left behind ----------------------------------------------------------

def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def same_weights(first, second):
    import torch

    a, b = weights(first), weights(second)
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def trainer_state(checkpoint):
    return json.loads((checkpoint / "trainer_state.json").read_text())


def learned(folder, examples=16):
    """True when the weights in `folder` are finite and predict demo validation targets clearly better
    (loss under 80%) than the same model untrained. NaN, zeroed or never-trained weights fail; so
    does a model that decodes to some string but learned nothing."""
    import math

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    torch.manual_seed(0)
    untrained = type(model)(model.config).eval()
    lines = [json.loads(line) for line in (ROOT / "demo" / "valid.jsonl").read_text(encoding="utf-8").splitlines()]
    lines = lines[:examples]
    batch = tokenizer([line["inputs"] for line in lines], text_target=[line["targets"] for line in lines],
                      return_tensors="pt", padding=True)
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    with torch.inference_mode():
        trained_loss, untrained_loss = (candidate(**batch).loss.item() for candidate in (model, untrained))
    return math.isfinite(trained_loss) and trained_loss < 0.8 * untrained_loss


def wait_for(path, pattern, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and re.search(pattern, path.read_text(encoding="utf-8", errors="replace")):
            return
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared in {path}")
