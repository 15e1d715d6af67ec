"""What each constant of train.py may be: the schema (SETTINGS: type, allowed values, bounds, in the
order of train.py's constants block), typed command-line values, `python train.py --help`, and the
checks that turn an impossible setting into one line naming the constant and the fix, before
anything is loaded."""

import importlib.util
import os
import re
from dataclasses import dataclass

from domainfocus.spans import RESTORATION_METRICS

TINY_MODEL = "tiny-local-t5"  # MODEL_NAME_OR_PATH for the tiny T5 built on this machine (the demo, the tests)


@dataclass(frozen=True)
class Setting:
    """One constant of train.py: its type and the values it may take. Its default and its help are
    the constant's value and trailing comment in train.py's constants block, which users edit."""

    name: str
    kind: type
    choices: tuple = ()
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    none_allowed: bool = False
    hint: str = ""  # added to the message of a value out of bounds, e.g. "e.g. 0.05"

    def problem(self, value):
        """What is wrong with `value` for this setting, in words, or None. A NaN fails every bound
        (a NaN threshold or rate would silently disable what it controls), so it is refused too."""
        if value is None and self.none_allowed:
            return None
        if self.choices:
            return None if value in self.choices else f"choose one of {', '.join(choice or repr(choice) for choice in self.choices)}"
        low = (self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
        high = (self.at_most is None or value <= self.at_most) and (self.below is None or value < self.below)
        if low and high:
            return None
        bounds = [f"at least {self.at_least:g}" if self.at_least is not None else "",
                  f"greater than {self.above:g}" if self.above is not None else "",
                  f"at most {self.at_most:g}" if self.at_most is not None else "",
                  f"below {self.below:g}" if self.below is not None else ""]
        if (self.at_least, self.at_most) == (0, 1):
            rule = "lie between 0 and 1"
        elif bounds == ["at least 0", "", "", ""]:
            rule = "not be negative"
        else:
            rule = "be " + " and ".join(bound for bound in bounds if bound)
        return f"must {rule}" + (f", {self.hint}" if self.hint else "")


def settings(kind, *names, **rules):
    """A Setting of `kind` and `rules` for each of `names`: a run of alike constants on one line."""
    return tuple(Setting(name, kind, **rules) for name in names)


# Every constant of train.py's block, in its order and under its headers (a test holds the two together).
# LORA_* and MAX_CHARS / MAX_SPAN are checked together in check_config, with one message each pair.
SETTINGS = (
    # model and data
    *settings(str, "MODEL_NAME_OR_PATH", "TRAIN_FILE", "VALID_FILE", "INPUT_COLUMN", "TARGET_COLUMN"),
    *settings(int, "MAX_INPUT_LENGTH", "MAX_TARGET_LENGTH", at_least=1),
    *settings(bool, "TRIM_VOCAB"),
    # masks drawn while training
    *settings(str, "LEXICON_FILE", "HARD_LEXICON_FILE"),
    *settings(bool, "FRESH_MASKS"),
    *settings(float, "TERM_MASK_PROB", "HARD_TERM_MASK_PROB", "MASK_RATE", at_least=0, at_most=1),
    *settings(int, "MAX_SPAN", "MAX_CHARS"),
    *settings(float, "NOISE", at_least=0, at_most=1),
    *settings(float, "VALID_RATIO", at_least=0, below=1, hint="e.g. 0.05"),
    *settings(str, "DOCUMENTS", choices=("lines", "paragraphs")),
    *settings(str, "TEXT_FIELD", "GROUP_FIELD"),
    # LoRA
    *settings(int, "LORA_RANK"),
    *settings(float, "LORA_ALPHA", "LORA_DROPOUT"),
    *settings(str, "LORA_TARGET_MODULES"),
    # schedule
    *settings(int, "PER_DEVICE_BATCH_SIZE", "GRADIENT_ACCUMULATION_STEPS", at_least=1),
    *settings(str, "OPTIMIZER", choices=("adafactor", "adamw_torch", "adamw_8bit")),
    *settings(float, "LEARNING_RATE", above=0),
    *settings(str, "LR_SCHEDULER"),
    *settings(int, "WARMUP_STEPS", at_least=0),
    *settings(float, "NUM_EPOCHS", above=0),
    *settings(int, "MAX_STEPS"),
    *settings(int, "EVAL_STEPS", "SAVE_STEPS", "LOGGING_STEPS", "SAVE_TOTAL_LIMIT", "MAX_NONFINITE_STEPS", at_least=1),
    # evaluation and early stopping
    *settings(int, "GEN_EVAL_SAMPLES", at_least=0),
    *settings(int, "NUM_BEAMS", at_least=1),
    *settings(str, "METRIC_FOR_BEST_MODEL"),
    *settings(int, "EARLY_STOPPING_START_STEP", at_least=0),
    *settings(int, "EARLY_STOPPING_PATIENCE", at_least=1),
    *settings(float, "EARLY_STOPPING_THRESHOLD", at_least=0),
    # hardware
    *settings(float, "GPU_MEMORY_GB", above=0, hint="your GPU's memory in GB, e.g. 6"),
    *settings(str, "PRECISION", choices=("auto", "bf16", "fp32", "fp16")),
    *settings(bool, "GRADIENT_CHECKPOINTING"),
    *settings(int, "DATALOADER_WORKERS", at_least=0),
    *settings(bool, "TORCH_COMPILE"),
    *settings(str, "FSDP", choices=("", "full_shard", "shard_grad_op", "hybrid_shard")),
    # output
    *settings(str, "OUTPUT_DIR"),
    *settings(str, "RESUME", none_allowed=True),
    *settings(bool, "OVERWRITE_OUTPUT_DIR"),
    *settings(str, "RESUME_CHANGES", choices=("warn", "refuse")),
    *settings(bool, "TENSORBOARD"),
    *settings(int, "SEED"),
)
SCHEMA = {setting.name: setting for setting in SETTINGS}

# T5's and mT5's linear layers: attention q, k, v, o; feed-forward wi (T5) or wi_0, wi_1 (T5 v1.1, mT5), wo.
LORA_MODULES = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


def lora_targets(config):
    return [name.strip() for name in config["LORA_TARGET_MODULES"].split(",") if name.strip()]


class ConfigError(ValueError):
    """A problem in the constants or the command line."""


def parse_value(name, text, default):
    """Parse `text` to the setting's type; `default` (the constant's value) is shown in the error."""
    setting = SCHEMA[name]
    if setting.none_allowed and text.lower() in ("none", "null", ""):
        return None
    try:
        if setting.kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if setting.kind is int:
            return int(text)
        if setting.kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"--{name}={text}: expected {setting.kind.__name__} like the default {default!r}.") from None
    return text


def help_text(script, defaults):
    """`python train.py --help`: the constants block of `script` (train.py) as its user reads it, headers
    and trailing comments, each constant with its value after --demo and overrides, and its allowed values."""
    lines = [f"usage: python {os.path.basename(script)} [--demo] [--check] [--NAME=value ...] | --plot OUTPUT_DIR | --help",
             ""]
    with open(script, encoding="utf-8") as handle:
        for line in handle:
            header = re.match(r"# --- (.*?) -*$", line.rstrip())
            constant = re.match(r"([A-Z][A-Z0-9_]*) = .*?(?:  # (.*))?$", line.rstrip())
            if header:
                lines.append(f"{header.group(1)}:")
            elif constant and constant.group(1) in SCHEMA:
                setting = SCHEMA[constant.group(1)]
                allowed = f"  [{' | '.join(setting.choices)}]" if setting.choices else ""
                lines.append(f"  --{setting.name}={defaults[setting.name]!r}{allowed}\n      {constant.group(2) or ''}")
    return "\n".join(lines)


def metric_for_best_model(config):
    name = config["METRIC_FOR_BEST_MODEL"]
    return name if name.startswith("eval_") else "eval_" + name


def check_config(config):
    """Catch impossible settings in a second, before any data or model is loaded."""
    # Settings with a list of choices first, then the bounds, so that of several mistakes the same one is named.
    for setting in sorted(SETTINGS, key=lambda setting: not setting.choices):
        value = config[setting.name]
        problem = setting.problem(value)
        if problem:
            shown = repr(value) if isinstance(value, str) else value
            raise ConfigError(f"{setting.name}={shown}: {problem}.")
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
    if config["FSDP"] and config["LORA_RANK"]:
        raise ConfigError(f"FSDP={config['FSDP']!r} with LORA_RANK={config['LORA_RANK']}: LoRA is not sharded by this "
                          "tool; LoRA's frozen base in bf16 fits where full fine-tuning does not, so set FSDP='' for "
                          "LoRA, or LORA_RANK=0 to shard a full fine-tuning.")
    if config["FSDP"] and config["OPTIMIZER"] != "adamw_torch":
        raise ConfigError(f"FSDP={config['FSDP']!r} with OPTIMIZER={config['OPTIMIZER']!r}: its state is made of plain "
                          "tensors that sharded weights cannot be combined with; use OPTIMIZER='adamw_torch', whose "
                          "state is sharded with the weights (and about 3e-4 for LEARNING_RATE).")
    if config["FSDP"] and config["PRECISION"] == "fp16":
        raise ConfigError(f"FSDP={config['FSDP']!r} with PRECISION='fp16': the fp16 loss scaler would see overflow "
                          "in its own shard only and processes could skip different steps; use PRECISION='bf16'.")
    if config["FSDP"] and config["TORCH_COMPILE"]:
        raise ConfigError(f"FSDP={config['FSDP']!r} with TORCH_COMPILE=True: not combined by this tool; set one of "
                          "them off.")
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
