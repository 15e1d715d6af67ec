"""The layout holds: the engine package never imports an entry script and has no import cycles, the
settings schema names every constant of train.py, and checkpoints written before the move resume."""

import ast
import io
import shutil
import subprocess
import sys
import tarfile

import pytest
from conftest import ROOT, offline_environment, same_weights, tiny_run_arguments

from domainfocus.settings import SETTINGS

ENTRY_SCRIPTS = {"train", "callbacks", "prepare", "restore", "bench", "benchmarks"}
LAST_ROOT_LAYOUT = "610f46e"  # the last commit with every module at the root, before the engine package


def imports_of(path):
    """Every module `path` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def layout_problems(root, package="domainfocus"):
    """Back-imports (a module of the package importing an entry script) and import cycles inside the
    package, as sentences; empty when the layout holds."""
    problems, graph = [], {}
    for path in sorted((root / package).glob("*.py")):
        module = f"{package}.{path.stem}"
        imported = imports_of(path)
        for name in sorted(imported):
            if name.split(".")[0] in ENTRY_SCRIPTS:
                problems.append(f"{module} imports the entry script {name}")
        graph[module] = {name for name in imported if name.startswith(package + ".")}
    finished, on_path = set(), []

    def visit(module):  # depth first; a module met again on the current path closes a cycle
        if module in on_path:
            problems.append("import cycle: " + " -> ".join(on_path[on_path.index(module):] + [module]))
            return
        if module in finished:
            return
        on_path.append(module)
        for name in sorted(graph.get(module, ())):
            visit(name)
        on_path.pop()
        finished.add(module)

    for module in sorted(graph):
        visit(module)
    return problems


def test_the_engine_never_imports_an_entry_script_and_has_no_import_cycles():
    assert layout_problems(ROOT) == []


def test_the_layout_check_catches_a_back_import_and_a_cycle(tmp_path):
    package = tmp_path / "domainfocus"
    package.mkdir()
    (package / "data.py").write_text("from domainfocus.report import summary\n")
    (package / "report.py").write_text("def summary():\n    from domainfocus.data import rows\n")
    (package / "modeling.py").write_text("import os\nfrom prepare import Lexicon\n")
    assert layout_problems(tmp_path) == ["domainfocus.modeling imports the entry script prepare",
                                         "import cycle: domainfocus.data -> domainfocus.report -> domainfocus.data"]


def constants_block():
    """(name, value) of each constant at the top of train.py, in order, up to the demo's settings."""
    constants = []
    for node in ast.parse((ROOT / "train.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id == "DEMO":
                break
            constants.append((node.targets[0].id, ast.literal_eval(node.value)))
    return constants


def test_the_settings_schema_names_every_constant_of_train_py_in_order_and_type():
    constants = constants_block()
    assert [name for name, _ in constants] == [setting.name for setting in SETTINGS]
    for (name, value), setting in zip(constants, SETTINGS):
        assert isinstance(value, setting.kind) or (value is None and setting.none_allowed), name
        assert setting.problem(value) is None, f"{name}'s default is refused by its own schema"


def test_help_lists_every_constant_with_its_value_and_its_comment():
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--demo", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for setting in SETTINGS:
        assert f"--{setting.name}=" in result.stdout
    assert "--EVAL_STEPS=50\n      optimizer steps between evaluations" in result.stdout  # the demo's value
    assert "--PRECISION='auto'  [auto | bf16 | fp32 | fp16]" in result.stdout


def test_a_checkpoint_written_before_the_engine_package_resumes_after_it(run_train, finished_run, tmp_path,
                                                                         small_data, hf_home):
    """A run of the last root-layout commit, stopped at step 10, resumed by this code to step 20, ends
    with the weights of a run of this code that never stopped (the schedule is constant after warm-up)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", LAST_ROOT_LAYOUT], capture_output=True)
    if archive.returncode:
        pytest.fail(f"git archive {LAST_ROOT_LAYOUT} failed ({archive.stderr.decode().strip()}): the test needs the "
                    "repository's history, as a full clone has it")
    old = tmp_path / "old"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(old, filter="data")
    output = tmp_path / "out"
    arguments = tiny_run_arguments(small_data, output, MAX_STEPS=10)
    written = subprocess.run([sys.executable, str(old / "train.py"), *map(str, arguments)], cwd=old,
                             capture_output=True, text=True, timeout=300,
                             env=offline_environment(hf_home))
    assert written.returncode == 0, written.stdout[-2000:] + written.stderr[-2000:]
    shutil.rmtree(output / "latest")  # as after a crash: only the checkpoint and best/ are left

    result = run_train(tiny_run_arguments(small_data, output, MAX_STEPS=20))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming from {output / 'checkpoint-10'}" in result.stdout
    assert "Changed since" in result.stdout and "max_steps 10 -> 20" in result.stdout
    assert "Summary: 10 steps this run (20 in total)" in result.stdout
    assert same_weights(output / "latest", finished_run[0] / "latest")
