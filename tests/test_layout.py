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

ENGINE = "domainfocus"
LAST_ROOT_LAYOUT = "610f46e"  # the last commit with every module at the root, before the engine package


def imports_of(path, package):
    """Every module the package module at `path` imports, at the top or inside a function, in every
    form: `import a.b`, `from a.b import c`, `from a import b` (module b, where b is one), and the
    relative forms, resolved against `package`."""
    modules = {child.stem for child in path.parent.glob("*.py")}
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative: level 1 is the package itself, level 2 the folder above it (where the entry scripts are).
            base = node.module or "" if node.level == 0 else ".".join(
                [package][:max(0, 2 - node.level)] + ([node.module] if node.module else []))
            names.add(base)
            if base == package:
                names.update(f"{package}.{alias.name}" for alias in node.names if alias.name in modules)
            elif not base:  # from .. import train
                names.update(alias.name for alias in node.names)
    return {name for name in names if name}


def entry_scripts(root, package):
    """The root's scripts and its packages other than `package` and the engine: what `package` must
    never import."""
    return ({path.stem for path in root.glob("*.py")}
            | {path.parent.name for path in root.glob("*/__init__.py") if path.parent.name not in (package, ENGINE)})


def layout_problems(root, package="domainfocus"):
    """Back-imports (a module of the package importing an entry script or another root package) and
    import cycles inside the package, as sentences; empty when the layout holds."""
    problems, graph = [], {}
    scripts = entry_scripts(root, package)
    for path in sorted((root / package).glob("*.py")):
        module = f"{package}.{path.stem}"
        imported = imports_of(path, package)
        for name in sorted(imported):
            if name.split(".")[0] in scripts:
                problems.append(f"{module} imports the entry script {name}")
        graph[module] = {name for name in imported if name.startswith(package + ".") and name != module}
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


@pytest.mark.parametrize("package", [ENGINE, "benchmarks"])
def test_no_package_imports_an_entry_script_and_none_has_import_cycles(package):
    """The engine, and the benchmark's sections (which bench.py hands train.py and callbacks.py to)."""
    assert layout_problems(ROOT, package) == []


@pytest.mark.parametrize("data, report, modeling, found", [
    ("from domainfocus.report import summary", "def summary():\n    from domainfocus.data import rows",
     "import os\nfrom prepare import Lexicon", "prepare"),
    ("from domainfocus import report", "def summary():\n    from . import data", "from .. import train", "train"),
    ("import domainfocus.report", "from .data import rows", "import tools.ocr", "tools.ocr"),
])
def test_the_layout_check_catches_a_back_import_and_a_cycle_in_every_import_form(tmp_path, data, report, modeling,
                                                                                  found):
    package = tmp_path / "domainfocus"
    package.mkdir()
    for name, text in (("__init__", ""), ("data", data), ("report", report), ("modeling", modeling)):
        (package / f"{name}.py").write_text(text + "\n")
    for script in ("prepare.py", "train.py"):
        (tmp_path / script).write_text("")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("")
    assert layout_problems(tmp_path) == [f"domainfocus.modeling imports the entry script {found}",
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


def test_a_checkpoint_written_before_the_engine_package_resumes_after_it(run_train, tmp_path, small_data, hf_home):
    """A 10-step run of the last root-layout commit, extended by this code to step 20, ends with the
    very weights of the same 10-step run of this code extended the same way; the two step-10
    checkpoints are equal too. (An extended schedule is compared with an extended one: extending
    MAX_STEPS on resume may round differently, in the last bit, from a run planned for 20 steps.)"""
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

    here = tmp_path / "here"
    for steps in (10, 20):
        done = run_train(tiny_run_arguments(small_data, here, MAX_STEPS=steps))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert same_weights(output / "checkpoint-10", here / "checkpoint-10")
    assert same_weights(output / "latest", here / "latest")
