"""The README stays true: every constant documented, the quick start and test commands as CI runs them."""

import re

import pytest

from conftest import ROOT
from train import default_config

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_constant_is_in_the_readme_table():
    table = "\n".join(line for line in README.splitlines() if line.startswith("| `"))
    missing = [name for name in default_config() if f"`{name}`" not in table]
    assert not missing, f"add these constants to the README's table: {missing}"


def test_quick_start_is_the_two_commands_and_ci_runs_the_readme_test_command():
    quick_start = README.split("## Quick start", 1)[1].split("## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quick_start, flags=re.S)
    assert blocks[0].strip().splitlines() == ["pip install -r requirements.txt", "python train.py --demo"]
    test_command = blocks[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_other_languages_are_linked():
    assert "(Introduction-to-Other-Languages.md)" in README
    assert (ROOT / "Introduction-to-Other-Languages.md").exists()


@pytest.mark.slow
def test_quick_start_works_as_written_on_a_fresh_copy(tmp_path, hf_home):
    """Runs the README's two quick-start commands in a copy of the project (about 2 minutes)."""
    import json
    import os
    import shutil
    import subprocess

    from conftest import offline_environment

    project = tmp_path / "project"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(
        ".git", "runs", "data", "__pycache__", ".pytest_cache", ".hypothesis"))
    quick_start = README.split("## Quick start", 1)[1].split("## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick_start, flags=re.S)[0].strip().splitlines()
    environment = {**offline_environment(hf_home), "PIP_NO_INDEX": "1"}  # everything is installed already
    for command in commands:
        result = subprocess.run(command, shell=True, cwd=project, capture_output=True, text=True, timeout=480,
                                env=environment)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    demo = project / "runs" / "demo"
    for name in ("best", "latest", "training_curves.png", "reliability.png", "metrics.jsonl", "best/README.md"):
        assert (demo / name).exists(), name
    evaluations = [record for record in map(json.loads, (demo / "metrics.jsonl").read_text().splitlines())
                   if "eval_loss" in record]
    # What the README promises: the loss falls clearly, the restoration rate rises.
    assert evaluations[-1]["eval_loss"] < evaluations[0]["eval_loss"] / 4
    assert evaluations[-1]["eval_span_accuracy"] > evaluations[0]["eval_span_accuracy"] + 0.15
    # The demo model is under-confident (README, "Confidence you can take at its word"): the calibration
    # fitted at its last evaluation shows confidence closer to how often it is right.
    assert evaluations[-1]["eval_calibration_error_fitted"] < evaluations[-1]["eval_calibration_error"]
    assert os.path.getsize(demo / "training_curves.png") > 20_000
