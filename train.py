"""DomainFocus Trainer: fine-tune T5 / mT5 to restore masked domain terms.

Edit the constants below and run:      python train.py
Override a constant for one run:       python train.py --EVAL_STEPS=500 --OUTPUT_DIR=runs/b
Try it on the bundled demo (CPU):      python train.py --demo
Ctrl+C stops after the current step and saves; running the same command again resumes.
"""

# --- model -----------------------------------------------------------------------------------
MODEL_NAME_OR_PATH = "google/mt5-base"  # hub name or local folder; "tiny-local-t5" builds a tiny T5 here
# --- data ------------------------------------------------------------------------------------
TRAIN_FILE = "data/train.jsonl"  # JSON Lines, one {"inputs": ..., "targets": ...} per line
VALID_FILE = "data/valid.jsonl"  # same format; used for eval_loss and choosing best/
INPUT_COLUMN = "inputs"  # field holding the masked text
TARGET_COLUMN = "targets"  # field holding the restored spans
MAX_INPUT_LENGTH = 512  # tokens; longer inputs are truncated and counted
MAX_TARGET_LENGTH = 256  # tokens; longer targets are truncated and counted
# --- schedule --------------------------------------------------------------------------------
PER_DEVICE_BATCH_SIZE = 4  # examples per forward pass on each GPU (4 fits mT5-base on 6 GB)
GRADIENT_ACCUMULATION_STEPS = 8  # forward passes per optimizer step; effective batch = 4 x 8 = 32
OPTIMIZER = "adafactor"  # "adafactor" (T5's own, least memory) or "adamw_torch"
LEARNING_RATE = 1e-3  # 1e-3 suits Adafactor with a fixed rate; use about 3e-4 with AdamW
LR_SCHEDULER = "constant_with_warmup"  # any transformers scheduler name: "linear", "cosine", ...
WARMUP_STEPS = 500  # optimizer steps of linear warm-up
NUM_EPOCHS = 3.0  # passes over TRAIN_FILE (ignored when MAX_STEPS > 0)
MAX_STEPS = -1  # optimizer steps in total; -1 = use NUM_EPOCHS
EVAL_STEPS = 1000  # optimizer steps between evaluations
SAVE_STEPS = 1000  # optimizer steps between checkpoints; a multiple of EVAL_STEPS
LOGGING_STEPS = 100  # optimizer steps between progress lines
SAVE_TOTAL_LIMIT = 3  # checkpoints kept (the best one is never deleted)
# --- evaluation and early stopping -----------------------------------------------------------
GEN_EVAL_SAMPLES = 200  # validation examples restored by greedy generation at each evaluation; 0 = loss only
METRIC_FOR_BEST_MODEL = "eval_loss"  # picks best/, drives early stopping: eval_loss, span_accuracy, char_accuracy, exact_match
EARLY_STOPPING_START_STEP = 6000  # evaluations before this step never stop training
EARLY_STOPPING_PATIENCE = 5  # evaluations without improvement before stopping
EARLY_STOPPING_THRESHOLD = 0.001  # smallest change of the metric that counts as improvement
# --- hardware --------------------------------------------------------------------------------
PRECISION = "auto"  # "auto" (bf16 where the GPU supports it, else fp32), "bf16", "fp32", "fp16" (risky)
GRADIENT_CHECKPOINTING = True  # on GPU: about 20% more compute for far less activation memory
DATALOADER_WORKERS = 0  # background processes preparing batches; 0 = in the training process
# --- output ----------------------------------------------------------------------------------
OUTPUT_DIR = "runs/domainfocus"  # checkpoints, best/, latest/, metrics.jsonl, train.log
RESUME = "auto"  # "auto" = newest complete checkpoint in OUTPUT_DIR; a checkpoint path; None = fresh
OVERWRITE_OUTPUT_DIR = False  # with RESUME=None: True clears an earlier run's outputs first
SEED = 42  # random seed for initialisation, sampling and dropout

# The embedded demo: a tiny T5 built on this machine and the bundled data, about 3 minutes on CPU.
# `--demo` only changes these defaults; `--NAME=value` given with it still wins. AdamW, because a
# model this small learns faster with it; Adafactor's advantage is memory, which only large models need.
DEMO = dict(
    MODEL_NAME_OR_PATH="tiny-local-t5", TRAIN_FILE="demo/train.jsonl", VALID_FILE="demo/valid.jsonl",
    OUTPUT_DIR="runs/demo", MAX_INPUT_LENGTH=128, MAX_TARGET_LENGTH=64, PER_DEVICE_BATCH_SIZE=32,
    GRADIENT_ACCUMULATION_STEPS=1, OPTIMIZER="adamw_torch", LEARNING_RATE=1e-3, WARMUP_STEPS=20,
    MAX_STEPS=800, EVAL_STEPS=50, SAVE_STEPS=50, LOGGING_STEPS=10, SAVE_TOTAL_LIMIT=2, GEN_EVAL_SAMPLES=100,
    EARLY_STOPPING_START_STEP=400, EARLY_STOPPING_PATIENCE=3, EARLY_STOPPING_THRESHOLD=0.01,
)

import difflib
import json
import logging
import os
import platform
import re
import shutil
import signal
import sys
import tempfile

TINY_MODEL = "tiny-local-t5"
CHOICES = {
    "PRECISION": ("auto", "bf16", "fp32", "fp16"),
    "OPTIMIZER": ("adafactor", "adamw_torch"),
}
NONE_ALLOWED = {"RESUME"}
GENERATION_METRICS = ("eval_span_accuracy", "eval_char_accuracy", "eval_exact_match")
OUTPUT_FILES = ("best", "latest", "metrics.jsonl", "train.log", "run_config.json", "training_curves.png")
logger = logging.getLogger("domainfocus")


class ConfigError(ValueError):
    """A problem in the constants or the command line."""


def default_config():
    """The constants block above, as a dict: the single source of every setting."""
    return {name: value for name, value in globals().items() if re.fullmatch(r"[A-Z][A-Z0-9_]*", name)
            and name not in ("DEMO", "TINY_MODEL", "CHOICES", "NONE_ALLOWED", "OUTPUT_FILES", "GENERATION_METRICS")}


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


def parse_arguments(argv, config):
    """Apply `--demo` and then every `--NAME=value` to `config`; returns (config, flags)."""
    config = dict(config)
    flags = set()
    if "--demo" in argv:
        config.update(DEMO)
        flags.add("demo")
    for argument in argv:
        if argument == "--demo":
            continue
        match = re.fullmatch(r"--([A-Za-z0-9_]+)=(.*)", argument, flags=re.S)
        if not match:
            raise ConfigError(f"{argument!r}: arguments look like --NAME=value (for example --EVAL_STEPS=500) or --demo.")
        name, text = match.groups()
        if name not in config:
            close = difflib.get_close_matches(name.upper(), list(config), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else "; see the constants at the top of train.py."
            raise ConfigError(f"--{name}: unknown constant{hint}")
        config[name] = parse_value(name, text, default_config()[name])
    return config, flags


def metric_for_best_model(config):
    name = config["METRIC_FOR_BEST_MODEL"]
    return name if name.startswith("eval_") else "eval_" + name


def check_config(config):
    """Catch impossible settings in a second, before any data or model is loaded."""
    for name, choices in CHOICES.items():
        if config[name] not in choices:
            raise ConfigError(f"{name}={config[name]!r}: choose one of {', '.join(choices)}.")
    for name in ("MAX_INPUT_LENGTH", "MAX_TARGET_LENGTH", "PER_DEVICE_BATCH_SIZE", "GRADIENT_ACCUMULATION_STEPS",
                 "EVAL_STEPS", "SAVE_STEPS", "LOGGING_STEPS", "SAVE_TOTAL_LIMIT", "EARLY_STOPPING_PATIENCE"):
        if config[name] < 1:
            raise ConfigError(f"{name}={config[name]}: must be at least 1.")
    for name in ("LEARNING_RATE", "NUM_EPOCHS"):
        if not config[name] > 0:
            raise ConfigError(f"{name}={config[name]}: must be greater than 0.")
    for name in ("WARMUP_STEPS", "GEN_EVAL_SAMPLES", "EARLY_STOPPING_START_STEP", "EARLY_STOPPING_THRESHOLD",
                 "DATALOADER_WORKERS"):
        if config[name] < 0:
            raise ConfigError(f"{name}={config[name]}: must not be negative.")
    if config["MAX_STEPS"] == 0 or config["MAX_STEPS"] < -1:
        raise ConfigError(f"MAX_STEPS={config['MAX_STEPS']}: use a positive number of steps, or -1 for NUM_EPOCHS.")
    if config["SAVE_STEPS"] % config["EVAL_STEPS"]:
        raise ConfigError(f"SAVE_STEPS={config['SAVE_STEPS']} is not a multiple of EVAL_STEPS={config['EVAL_STEPS']}: "
                          "every checkpoint must carry a fresh evaluation; set SAVE_STEPS to a multiple of it.")
    metric = metric_for_best_model(config)
    if metric not in ("eval_loss", *GENERATION_METRICS):
        raise ConfigError(f"METRIC_FOR_BEST_MODEL={config['METRIC_FOR_BEST_MODEL']!r}: choose eval_loss, "
                          "span_accuracy, char_accuracy or exact_match.")
    if metric in GENERATION_METRICS and config["GEN_EVAL_SAMPLES"] == 0:
        raise ConfigError(f"METRIC_FOR_BEST_MODEL={metric} needs generation: set GEN_EVAL_SAMPLES above 0.")
    if os.path.isfile(config["OUTPUT_DIR"]):
        raise ConfigError(f"OUTPUT_DIR={config['OUTPUT_DIR']} is a file: choose a folder path.")
    model = config["MODEL_NAME_OR_PATH"]
    if model != TINY_MODEL and (os.path.isabs(model) or model.startswith(".") or os.path.exists(model)):
        if not os.path.isdir(model):
            raise ConfigError(f"MODEL_NAME_OR_PATH={model}: no such folder; give a model folder or a hub name.")
        if not any(os.path.exists(os.path.join(model, name)) for name in ("tokenizer.json", "spiece.model")):
            raise ConfigError(f"MODEL_NAME_OR_PATH={model} has no tokenizer (tokenizer.json or spiece.model); "
                              "copy the tokenizer files into it.")


def choose_precision(precision):
    """Map PRECISION to Trainer flags: bf16 where supported, fp16 only when asked, else fp32."""
    import torch

    if precision == "fp16":
        if not torch.cuda.is_available():
            raise ConfigError("PRECISION='fp16' needs a CUDA GPU; use 'auto' or 'fp32'.")
        logger.warning("PRECISION='fp16': T5 and mT5 overflow in fp16 and the loss often turns NaN; prefer 'bf16'.")
        return {"fp16": True, "bf16": False}
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
        logger.info("PRECISION='auto' chose %s.", precision)
    return {"fp16": False, "bf16": precision == "bf16"}


def find_checkpoint(config):
    """The checkpoint to resume from, or None for a fresh start; refuses to clobber a finished run."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    output_dir, resume = config["OUTPUT_DIR"], config["RESUME"]
    if resume not in (None, "auto"):
        if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
            raise ConfigError(f"RESUME={resume}: not a complete checkpoint folder (no trainer_state.json).")
        return resume
    # Written by hand: transformers' get_last_checkpoint also returns a checkpoint that a crash
    # left half-written; trainer_state.json is the last file the Trainer writes into one.
    checkpoints = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = re.fullmatch(PREFIX_CHECKPOINT_DIR + r"-(\d+)", name)
            if match:
                checkpoints.append((int(match.group(1)), os.path.join(output_dir, name)))
    if resume == "auto":
        for _, path in sorted(checkpoints, reverse=True):
            if os.path.isfile(os.path.join(path, "trainer_state.json")):
                return path
            logger.warning("Skipping %s: it is incomplete (interrupted while saving).", path)
        return None
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not config["OVERWRITE_OUTPUT_DIR"]:
            raise ConfigError(f"OUTPUT_DIR={output_dir} already holds a run: set RESUME='auto' to continue it, "
                              "choose another OUTPUT_DIR, or add --OVERWRITE_OUTPUT_DIR=True to start over.")
        for name in os.listdir(output_dir):
            if name.startswith(PREFIX_CHECKPOINT_DIR) or name in OUTPUT_FILES:
                path = os.path.join(output_dir, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return None


def build_tiny_t5(train_file, input_column, target_column, seed):
    """A tiny T5 built on this machine: SentencePiece trained on the training text, small config.

    Used by --demo and the tests, so that nothing is downloaded. The tokenizer follows T5's
    layout (pad 0, eos 1, unk 2, 100 sentinels at the end of the vocabulary).
    """
    import sentencepiece
    import torch
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    from spans import SENTINEL

    def sentences():
        with open(train_file, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    example = json.loads(line)
                    for column in (input_column, target_column):
                        yield SENTINEL.sub(" ", example[column])

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "spiece.model"), "wb") as model_file:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=sentences(), model_writer=model_file, vocab_size=1000, hard_vocab_limit=False,
                model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                # Short pieces, as in mT5's vocabulary: repetitive demo text would otherwise merge
                # a whole phrase, term included, into one token and hide the term from the model.
                max_sentencepiece_length=4, num_threads=1, minloglevel=2,
            )
        tokenizer = T5Tokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(tokenizer), d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    return tokenizer, T5ForConditionalGeneration(config)


def load_model(config, checkpoint):
    """Tokenizer and model from MODEL_NAME_OR_PATH (or, for the tiny demo model, its checkpoint)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    name = config["MODEL_NAME_OR_PATH"]
    if name == TINY_MODEL and checkpoint:
        name = checkpoint
    elif name == TINY_MODEL:
        return build_tiny_t5(config["TRAIN_FILE"], config["INPUT_COLUMN"], config["TARGET_COLUMN"], config["SEED"])
    local = os.path.isdir(name)  # a local folder never touches the network
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
    model = AutoModelForSeq2SeqLM.from_pretrained(name, local_files_only=local, use_safetensors=True)
    return tokenizer, model


def training_arguments(config, precision_flags):
    import torch
    from transformers import Seq2SeqTrainingArguments

    on_gpu = torch.cuda.is_available()
    return Seq2SeqTrainingArguments(
        output_dir=config["OUTPUT_DIR"],
        per_device_train_batch_size=config["PER_DEVICE_BATCH_SIZE"],
        per_device_eval_batch_size=config["PER_DEVICE_BATCH_SIZE"] * 2,
        gradient_accumulation_steps=config["GRADIENT_ACCUMULATION_STEPS"],
        optim=config["OPTIMIZER"],
        learning_rate=config["LEARNING_RATE"],
        lr_scheduler_type=config["LR_SCHEDULER"],
        warmup_steps=config["WARMUP_STEPS"],
        num_train_epochs=config["NUM_EPOCHS"],
        max_steps=config["MAX_STEPS"],
        eval_strategy="steps",
        eval_steps=config["EVAL_STEPS"],
        save_strategy="steps",
        save_steps=config["SAVE_STEPS"],
        save_total_limit=config["SAVE_TOTAL_LIMIT"],
        logging_steps=config["LOGGING_STEPS"],
        metric_for_best_model=metric_for_best_model(config),
        greater_is_better=metric_for_best_model(config) != "eval_loss",
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        activation_checkpointing=config["GRADIENT_CHECKPOINTING"] and on_gpu,
        dataloader_num_workers=config["DATALOADER_WORKERS"],
        dataloader_pin_memory=on_gpu,
        seed=config["SEED"],
        report_to="none",  # privacy: nothing leaves the machine
        disable_tqdm=True,  # SafeDetailedProgressCallback prints the progress
        logging_nan_inf_filter=False,  # a NaN loss must show, not be replaced by an average
        predict_with_generate=False,
        **precision_flags,
    )


def nothing_left_to_train(checkpoint, trainer, patience):
    """Why resuming `checkpoint` would train nothing (schedule done or stopped early), else None.

    Without this check the Trainer runs one step past the end of a finished schedule, and an
    early-stopped run trains until its next evaluation only to stop again.
    """
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    max_steps = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    if state["global_step"] >= max_steps:
        return (f"{checkpoint} already reached step {state['global_step']} of {max_steps}; "
                "raise MAX_STEPS or NUM_EPOCHS to train further.")
    early_stopping = state.get("stateful_callbacks", {}).get("DelayedEarlyStopping", {}).get("attributes", {})
    if early_stopping.get("patience_counter", 0) >= patience:
        return (f"{checkpoint} was stopped early after {early_stopping['patience_counter']} evaluations without "
                "improvement; raise EARLY_STOPPING_PATIENCE to continue it.")
    return None


def make_trainer_class():
    from transformers import Seq2SeqTrainer

    from restore import generate
    from spans import restoration_metrics

    class DomainFocusTrainer(Seq2SeqTrainer):
        """Seq2SeqTrainer that adds restoration metrics on a fixed validation subset.

        eval_loss covers the whole validation set; greedy generation, which costs far more per
        example, runs on `generation_examples` only, so evaluation stays a small share of a run.
        """

        def __init__(self, *args, generation_examples=(), max_input_length=512, max_new_tokens=256, **kwargs):
            super().__init__(*args, **kwargs)
            self.generation_examples = generation_examples
            self.max_input_length = max_input_length
            self.max_new_tokens = max_new_tokens

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                            metric_key_prefix="eval"):
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            if metric_key_prefix == "eval" and self.generation_examples:
                inputs, targets = zip(*self.generation_examples)
                predictions = generate(self.accelerator.unwrap_model(self.model), self.processing_class,
                                       list(inputs), self.args.per_device_eval_batch_size, self.max_input_length,
                                       self.max_new_tokens)
                for name, value in restoration_metrics(predictions, list(targets)).items():
                    output.metrics[f"eval_{name}"] = value
            return output

        # The Trainer drops unused columns before it builds the length-grouped sampler, which
        # throws away the precomputed "length" column and makes it re-measure every example at
        # start-up; the sampler gets the full data set here, the data loader still the pruned one.
        def _get_train_sampler(self, train_dataset=None):
            return super()._get_train_sampler(self.train_dataset)

    return DomainFocusTrainer


def model_saver(model, tokenizer):
    """best/ and latest/ hold only what from_pretrained needs: safetensors weights, config, tokenizer."""

    def save(folder):
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return save


def setup_logging(output_dir):
    """Progress lines to the console and, without carriage returns, to OUTPUT_DIR/train.log."""
    from transformers.utils import logging as transformers_logging

    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    handlers = [console]
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    if output_dir and main_process:
        os.makedirs(output_dir, exist_ok=True)
        log_file = logging.FileHandler(os.path.join(output_dir, "train.log"), encoding="utf-8")
        log_file.setFormatter(formatter)
        handlers.append(log_file)
    logger.handlers[:] = handlers
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False
    transformers_logging.set_verbosity_warning()
    transformers_logging.disable_progress_bar()  # "Writing model shards" bars would clutter the log


def write_json_atomically(path, payload):
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
    os.replace(temporary, path)


def run_record(config, flags, checkpoint, counts, world_size):
    import datasets
    import torch
    import transformers

    return {
        "constants": config,
        "flags": sorted(flags),
        "resumed_from": checkpoint,
        "effective_batch_size": config["PER_DEVICE_BATCH_SIZE"] * config["GRADIENT_ACCUMULATION_STEPS"] * world_size,
        "examples": {split: {"examples": n, "inputs_truncated": cut_in, "targets_truncated": cut_out}
                     for split, (n, cut_in, cut_out) in counts.items()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "datasets": datasets.__version__},
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
    }


def summarize(trainer, early_stopping, interrupt, output_dir, start_step, saved_latest):
    state = trainer.state
    if interrupt.signal_number:
        reason = f"interrupted by {signal.Signals(interrupt.signal_number).name}"
    elif early_stopping.stop_reason:
        reason = early_stopping.stop_reason
    else:
        reason = f"finished the schedule ({state.max_steps} steps)"
    logger.info("Summary: %d steps this run (%d in total); stopped: %s.", state.global_step - start_step,
                state.global_step, reason)
    if state.best_global_step:
        logger.info("Best %s %.4f at step %d -> %s", trainer.args.metric_for_best_model, state.best_metric,
                    state.best_global_step, os.path.join(output_dir, "best"))
    else:
        logger.info("No evaluation has run yet, so there is no best/ model; latest/ holds the current weights.")
    if saved_latest:
        logger.info("Latest weights (step %d) -> %s", state.global_step, os.path.join(output_dir, "latest"))
    logger.info("Checkpoints, metrics.jsonl, train.log and run_config.json are in %s; "
                "run the same command again to resume.", output_dir)


def main(argv):
    from callbacks import GracefulInterrupt
    from data import check_jsonl

    # 1. Constants, command line, and every check that needs neither data nor a model.
    config, flags = parse_arguments(argv, default_config())
    check_config(config)
    interrupt = GracefulInterrupt()
    interrupt.install()
    files = {"train": config["TRAIN_FILE"], "validation": config["VALID_FILE"]}
    for split, constant in (("train", "TRAIN_FILE"), ("validation", "VALID_FILE")):
        check_jsonl(files[split], config["INPUT_COLUMN"], config["TARGET_COLUMN"], constant)
    checkpoint = find_checkpoint(config)
    output_dir = config["OUTPUT_DIR"]
    setup_logging(output_dir)
    logger.info("Resuming from %s." % checkpoint if checkpoint else "Starting a fresh run in %s." % output_dir)
    return train(config, flags, checkpoint, interrupt)


def train(config, flags, checkpoint, interrupt):
    import torch
    from transformers import DataCollatorForSeq2Seq, set_seed

    from callbacks import (BestModelCallback, DelayedEarlyStopping, MetricsFileCallback,
                           SafeDetailedProgressCallback, recover_interrupted_saves, save_atomically)
    from data import load_tokenized, read_examples, report_truncation

    output_dir = config["OUTPUT_DIR"]
    recover_interrupted_saves(output_dir)
    # 2. Model and data: the tokenizer decides the tokens, so it comes first.
    precision_flags = choose_precision(config["PRECISION"])
    set_seed(config["SEED"])
    tokenizer, model = load_model(config, checkpoint)
    files = {"train": config["TRAIN_FILE"], "validation": config["VALID_FILE"]}
    datasets_by_split, counts = load_tokenized(files, tokenizer, config["INPUT_COLUMN"], config["TARGET_COLUMN"],
                                               config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"])
    report_truncation(counts, files, config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"])
    args = training_arguments(config, precision_flags)
    # 3. Trainer and the DomainFocus callbacks.
    early_stopping = DelayedEarlyStopping(config["EARLY_STOPPING_START_STEP"], config["EARLY_STOPPING_PATIENCE"],
                                          config["EARLY_STOPPING_THRESHOLD"])
    trainer = make_trainer_class()(
        model=model, args=args, train_dataset=datasets_by_split["train"],
        eval_dataset=datasets_by_split["validation"], processing_class=tokenizer,
        # Labels are padded with -100, so the loss covers real target tokens only.
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        generation_examples=read_examples(config["VALID_FILE"], config["INPUT_COLUMN"], config["TARGET_COLUMN"],
                                          config["GEN_EVAL_SAMPLES"]),
        max_input_length=config["MAX_INPUT_LENGTH"], max_new_tokens=config["MAX_TARGET_LENGTH"],
        callbacks=[SafeDetailedProgressCallback(), early_stopping,
                   MetricsFileCallback(os.path.join(output_dir, "metrics.jsonl")), interrupt],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    save_model = model_saver(trainer.model, tokenizer)
    trainer.add_callback(BestModelCallback(os.path.join(output_dir, "best"), save_model))
    if args.should_save:
        write_json_atomically(os.path.join(output_dir, "run_config.json"),
                              run_record(config, flags, checkpoint, counts, args.world_size))
    logger.info("Training %s on %d examples (%d for evaluation), effective batch %d, on %s.",
                config["MODEL_NAME_OR_PATH"], counts["train"][0], counts["validation"][0],
                args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
                "GPU" if torch.cuda.is_available() else "CPU")
    nothing_left = checkpoint and nothing_left_to_train(checkpoint, trainer, config["EARLY_STOPPING_PATIENCE"])
    if nothing_left:
        logger.info("Nothing to train: %s", nothing_left)
        return 0
    # 4. Train. From here on the first Ctrl+C means "finish the step, save, stop".
    interrupt.arm()
    trainer.train(resume_from_checkpoint=checkpoint)
    saved_latest = False
    if args.should_save:
        save_atomically(save_model, os.path.join(output_dir, "latest"))
        saved_latest = True
    start_step = int(checkpoint.rsplit("-", 1)[-1]) if checkpoint and re.search(r"-\d+$", checkpoint) else 0
    summarize(trainer, early_stopping, interrupt, output_dir, start_step, saved_latest)
    return interrupt.exit_code


def run(argv):
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    from data import DataError

    try:
        return main(argv)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        print("Interrupted. Saves already on disk are intact; run the same command again to resume.",
              file=sys.stderr)
        return 128 + getattr(interruption, "signal_number", signal.SIGINT)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
