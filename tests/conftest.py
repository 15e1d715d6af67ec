"""Shared fixtures: small data files cut from the bundled demo, and a helper that runs train.py.

Run the suite with:  python -m pytest tests
"""

import os
import subprocess
import sys
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


def run_train_process(arguments, hf_home, timeout=300):
    """Run `python train.py ARGS...` offline; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, arguments)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=offline_environment(hf_home))


@pytest.fixture
def run_train(hf_home):
    return lambda arguments, timeout=300: run_train_process(arguments, hf_home, timeout)


@pytest.fixture
def start_train(tmp_path, hf_home):
    """Start `python train.py ARGS...` in the background; returns the Popen (output in a file)."""
    processes = []

    def start(arguments):
        log = open(tmp_path / "console.log", "w")
        process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *arguments], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, text=True,
                                   env=offline_environment(hf_home))
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
