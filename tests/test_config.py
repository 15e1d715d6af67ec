"""Constants and command-line overrides: typed like the constant, typos caught in one line."""

import pytest

import train
from train import ConfigError, check_config, default_config, parse_arguments


def test_defaults_follow_the_original_recipe():
    config = default_config()
    assert config["GRADIENT_ACCUMULATION_STEPS"] == 8
    assert (config["EVAL_STEPS"], config["SAVE_STEPS"], config["LOGGING_STEPS"]) == (1000, 1000, 100)
    assert config["EARLY_STOPPING_START_STEP"] == 6000
    assert (config["EARLY_STOPPING_PATIENCE"], config["EARLY_STOPPING_THRESHOLD"]) == (5, 0.001)
    assert config["PRECISION"] == "auto" and config["RESUME"] == "auto"
    for name in ("MODEL_NAME_OR_PATH", "TRAIN_FILE", "VALID_FILE", "OUTPUT_DIR", "MAX_INPUT_LENGTH",
                 "MAX_TARGET_LENGTH", "PER_DEVICE_BATCH_SIZE", "LEARNING_RATE", "NUM_EPOCHS", "MAX_STEPS",
                 "SAVE_TOTAL_LIMIT", "SEED"):
        assert name in config
    check_config(config)


def test_overrides_are_typed_like_the_constant():
    config, _ = parse_arguments(["--EVAL_STEPS=50", "--LEARNING_RATE=3e-4", "--OVERWRITE_OUTPUT_DIR=true",
                                 "--OUTPUT_DIR=runs/a b", "--RESUME=None", "--NUM_EPOCHS=2"], default_config())
    assert config["EVAL_STEPS"] == 50 and isinstance(config["EVAL_STEPS"], int)
    assert config["LEARNING_RATE"] == 3e-4
    assert config["OVERWRITE_OUTPUT_DIR"] is True
    assert config["OUTPUT_DIR"] == "runs/a b"
    assert config["RESUME"] is None
    assert config["NUM_EPOCHS"] == 2.0 and isinstance(config["NUM_EPOCHS"], float)


def test_demo_changes_defaults_but_explicit_overrides_win():
    config, flags = parse_arguments(["--TRAIN_FILE=mine.jsonl", "--demo"], default_config())
    assert flags == {"demo"}
    assert config["MODEL_NAME_OR_PATH"] == train.TINY_MODEL
    assert config["TRAIN_FILE"] == "mine.jsonl"
    assert config["VALID_FILE"] == "demo/valid.jsonl"


@pytest.mark.parametrize("argument, expected", [
    ("--EVAL_STEP=5", "--EVAL_STEP: unknown constant; did you mean EVAL_STEPS?"),
    ("--eval_steps=5", "did you mean EVAL_STEPS?"),
    ("--EVAL_STEPS=ten", "--EVAL_STEPS=ten: expected int like the default 1000."),
    ("--EVAL_STEPS=1.5", "expected int"),
    ("--LEARNING_RATE=fast", "expected float"),
    ("--OVERWRITE_OUTPUT_DIR=maybe", "expected bool"),
    ("EVAL_STEPS=5", "arguments look like --NAME=value"),
    ("--EVAL_STEPS", "arguments look like --NAME=value"),
])
def test_bad_overrides_name_the_constant(argument, expected):
    with pytest.raises(ConfigError) as error:
        parse_arguments([argument], default_config())
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("overrides, expected", [
    ({"PRECISION": "fp8"}, "PRECISION='fp8': choose one of auto, bf16, fp32, fp16."),
    ({"OPTIMIZER": "sgd"}, "OPTIMIZER='sgd'"),
    ({"EVAL_STEPS": 0}, "EVAL_STEPS=0: must be at least 1."),
    ({"SAVE_STEPS": 1500}, "SAVE_STEPS=1500 is not a multiple of EVAL_STEPS=1000"),
    ({"LEARNING_RATE": 0.0}, "LEARNING_RATE=0.0: must be greater than 0."),
    ({"MAX_STEPS": 0}, "MAX_STEPS=0"),
    ({"EARLY_STOPPING_THRESHOLD": -0.1}, "must not be negative"),
    ({"MODEL_NAME_OR_PATH": "./no/such/model"}, "no such folder"),
    ({"METRIC_FOR_BEST_MODEL": "bleu"}, "choose eval_loss, span_accuracy, char_accuracy or exact_match"),
    ({"METRIC_FOR_BEST_MODEL": "span_accuracy", "GEN_EVAL_SAMPLES": 0}, "set GEN_EVAL_SAMPLES above 0"),
])
def test_impossible_settings_are_refused_before_loading_anything(overrides, expected):
    config = {**default_config(), **overrides}
    with pytest.raises(ConfigError) as error:
        check_config(config)
    assert expected in str(error.value)


def test_model_folder_without_tokenizer_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no tokenizer"):
        check_config({**default_config(), "MODEL_NAME_OR_PATH": str(tmp_path)})


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file"):
        check_config({**default_config(), "OUTPUT_DIR": str(tmp_path / "out")})


def test_typo_on_the_command_line_exits_2_with_one_line(run_train, tmp_path):
    result = run_train(["--demo", "--EVAL_STEP=5", f"--OUTPUT_DIR={tmp_path / 'out'}"], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --EVAL_STEP: unknown constant; did you mean EVAL_STEPS?"
    assert not (tmp_path / "out").exists()


def test_restoration_metrics_can_pick_the_best_model():
    from domainfocus.settings import metric_for_best_model
    from domainfocus.trainer import training_arguments

    config = {**default_config(), "METRIC_FOR_BEST_MODEL": "span_accuracy", "OUTPUT_DIR": "unused"}
    check_config(config)
    assert metric_for_best_model(config) == "eval_span_accuracy"
    arguments = training_arguments(config, {"fp16": False, "bf16": False})
    assert arguments.metric_for_best_model == "eval_span_accuracy" and arguments.greater_is_better
