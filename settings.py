"""What each constant of train.py may be: typed command-line values and the checks that turn an
impossible setting into one line naming the constant and the fix, before anything is loaded."""

import importlib.util
import os

from spans import RESTORATION_METRICS

TINY_MODEL = "tiny-local-t5"  # MODEL_NAME_OR_PATH for the tiny T5 built on this machine (the demo, the tests)

CHOICES = {
    "PRECISION": ("auto", "bf16", "fp32", "fp16"),
    "OPTIMIZER": ("adafactor", "adamw_torch", "adamw_8bit"),
    "RESUME_CHANGES": ("warn", "refuse"),
    "DOCUMENTS": ("lines", "paragraphs"),
}
NONE_ALLOWED = {"RESUME"}


# T5's and mT5's linear layers: attention q, k, v, o; feed-forward wi (T5) or wi_0, wi_1 (T5 v1.1, mT5), wo.
LORA_MODULES = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


def lora_targets(config):
    return [name.strip() for name in config["LORA_TARGET_MODULES"].split(",") if name.strip()]


class ConfigError(ValueError):
    """A problem in the constants or the command line."""


def parse_value(name, text, default):
    """Parse `text` to the type of the constant's default value."""
    if name in NONE_ALLOWED and text.lower() in ("none", "null", ""):
        return None
    kind = type(default)
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"--{name}={text}: expected {kind.__name__} like the default {default!r}.") from None
    return text


def metric_for_best_model(config):
    name = config["METRIC_FOR_BEST_MODEL"]
    return name if name.startswith("eval_") else "eval_" + name


def check_config(config):
    """Catch impossible settings in a second, before any data or model is loaded."""
    for name, choices in CHOICES.items():
        if config[name] not in choices:
            raise ConfigError(f"{name}={config[name]!r}: choose one of {', '.join(choices)}.")
    for name in ("MAX_INPUT_LENGTH", "MAX_TARGET_LENGTH", "PER_DEVICE_BATCH_SIZE", "GRADIENT_ACCUMULATION_STEPS",
                 "EVAL_STEPS", "SAVE_STEPS", "LOGGING_STEPS", "SAVE_TOTAL_LIMIT", "EARLY_STOPPING_PATIENCE",
                 "MAX_NONFINITE_STEPS", "NUM_BEAMS"):
        if config[name] < 1:
            raise ConfigError(f"{name}={config[name]}: must be at least 1.")
    for name in ("LEARNING_RATE", "NUM_EPOCHS"):
        if not config[name] > 0:
            raise ConfigError(f"{name}={config[name]}: must be greater than 0.")
    for name in ("WARMUP_STEPS", "GEN_EVAL_SAMPLES", "EARLY_STOPPING_START_STEP", "EARLY_STOPPING_THRESHOLD",
                 "DATALOADER_WORKERS"):
        if config[name] < 0:
            raise ConfigError(f"{name}={config[name]}: must not be negative.")
    for name in ("TERM_MASK_PROB", "HARD_TERM_MASK_PROB", "MASK_RATE", "NOISE"):
        if not 0 <= config[name] <= 1:
            raise ConfigError(f"{name}={config[name]}: must lie between 0 and 1.")
    if not 0 <= config["VALID_RATIO"] < 1:
        raise ConfigError(f"VALID_RATIO={config['VALID_RATIO']}: must be at least 0 and below 1, e.g. 0.05.")
    if config["MAX_CHARS"] < 8 or config["MAX_SPAN"] < 1:
        raise ConfigError(f"MAX_CHARS={config['MAX_CHARS']}, MAX_SPAN={config['MAX_SPAN']}: MAX_CHARS must be at least "
                          "8 and MAX_SPAN at least 1.")
    if config["LORA_RANK"] < 0 or not config["LORA_ALPHA"] > 0 or not 0 <= config["LORA_DROPOUT"] < 1:
        raise ConfigError(f"LORA_RANK={config['LORA_RANK']}, LORA_ALPHA={config['LORA_ALPHA']}, LORA_DROPOUT="
                          f"{config['LORA_DROPOUT']}: the rank must be 0 (off) or more, the alpha above 0, the dropout "
                          "at least 0 and below 1.")
    unknown = set(lora_targets(config)) - set(LORA_MODULES)
    if config["LORA_RANK"] and (unknown or not lora_targets(config)):
        raise ConfigError(f"LORA_TARGET_MODULES={config['LORA_TARGET_MODULES']!r}: use T5's linear layers, "
                          f"comma-separated: {', '.join(LORA_MODULES)}.")
    if config["LORA_RANK"] and importlib.util.find_spec("peft") is None:
        raise ConfigError("LORA_RANK > 0 needs the peft package: pip install -r requirements.txt.")
    if config["SAVE_TOTAL_LIMIT"] < 2:  # with 1 the Trainer deletes the newest checkpoint at the end, keeping the best
        raise ConfigError(f"SAVE_TOTAL_LIMIT={config['SAVE_TOTAL_LIMIT']}: keep at least 2 checkpoints, the newest "
                          "(to resume) and the best.")
    if config["MAX_STEPS"] == 0 or config["MAX_STEPS"] < -1:
        raise ConfigError(f"MAX_STEPS={config['MAX_STEPS']}: use a positive number of steps, or -1 for NUM_EPOCHS.")
    if config["SAVE_STEPS"] % config["EVAL_STEPS"]:
        raise ConfigError(f"SAVE_STEPS={config['SAVE_STEPS']} is not a multiple of EVAL_STEPS={config['EVAL_STEPS']}: "
                          "every checkpoint must carry a fresh evaluation; set SAVE_STEPS to a multiple of it.")
    metric = metric_for_best_model(config)
    if metric not in ("eval_loss", *RESTORATION_METRICS):
        raise ConfigError(f"METRIC_FOR_BEST_MODEL={config['METRIC_FOR_BEST_MODEL']!r}: choose eval_loss, "
                          "span_accuracy, char_accuracy or exact_match.")
    if metric in RESTORATION_METRICS and config["GEN_EVAL_SAMPLES"] == 0:
        raise ConfigError(f"METRIC_FOR_BEST_MODEL={metric} needs generation: set GEN_EVAL_SAMPLES above 0.")
    if config["OPTIMIZER"] == "adamw_8bit" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("OPTIMIZER='adamw_8bit' needs the bitsandbytes package and a CUDA GPU: pip install bitsandbytes.")
    if not config["GPU_MEMORY_GB"] > 0:
        raise ConfigError(f"GPU_MEMORY_GB={config['GPU_MEMORY_GB']}: give your GPU's memory in GB, e.g. 6.")
    if config["TENSORBOARD"] and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("TENSORBOARD=True needs the tensorboard package: pip install tensorboard.")
    if os.path.isfile(config["OUTPUT_DIR"]):
        raise ConfigError(f"OUTPUT_DIR={config['OUTPUT_DIR']} is a file: choose a folder path.")
    existing = os.path.abspath(config["OUTPUT_DIR"])
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"OUTPUT_DIR={config['OUTPUT_DIR']} cannot be written ({existing} is not a writable folder); "
                          "choose a folder you can write to.")
    model = config["MODEL_NAME_OR_PATH"]
    if model != TINY_MODEL and (os.path.isabs(model) or model.startswith(".") or os.path.exists(model)):
        if not os.path.isdir(model):
            raise ConfigError(f"MODEL_NAME_OR_PATH={model}: no such folder; give a model folder or a hub name.")
        if not any(os.path.exists(os.path.join(model, name)) for name in ("tokenizer.json", "spiece.model")):
            raise ConfigError(f"MODEL_NAME_OR_PATH={model} has no tokenizer (tokenizer.json or spiece.model); "
                              "copy the tokenizer files into it.")
