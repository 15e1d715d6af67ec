"""The README stays true: every constant documented, the quick start and test commands as CI runs them."""

import re

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
