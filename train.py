"""DomainFocus Trainer: fine-tune T5 / mT5 to restore masked domain terms.

Edit the constants below and run:      python train.py
Override a constant for one run:       python train.py --EVAL_STEPS=500 --OUTPUT_DIR=runs/b
Try it on the bundled demo (CPU):      python train.py --demo
Check the plan without training:        python train.py --check   (also with --demo and overrides)
Redraw the curves of a run:             python train.py --plot runs/demo
List the constants with their help:     python train.py --help
Ctrl+C stops after the current step and saves; running the same command again resumes.
"""

# --- model -----------------------------------------------------------------------------------
MODEL_NAME_OR_PATH = "google/mt5-base"  # hub name or local folder; "tiny-local-t5" builds a tiny T5 here
# --- data ------------------------------------------------------------------------------------
TRAIN_FILE = "data/train.jsonl"  # JSON Lines, one {"inputs": ..., "targets": ...} per line; or raw text (.txt) with LEXICON_FILE
VALID_FILE = "data/valid.jsonl"  # same format; used for eval_loss and choosing best/; raw text only: "" = hold out VALID_RATIO
INPUT_COLUMN = "inputs"  # field holding the masked text
TARGET_COLUMN = "targets"  # field holding the restored spans
MAX_INPUT_LENGTH = 512  # tokens; longer inputs are truncated and counted
MAX_TARGET_LENGTH = 256  # tokens; longer targets are truncated and counted
TRIM_VOCAB = False  # True: keep only the tokens the data uses (mT5-base: 582 M -> about 250 M parameters)
# --- masks drawn while training (raw text in TRAIN_FILE; prepare.py's rules, see README) ---------
LEXICON_FILE = ""  # domain terms, one per line; set it to train on raw text ("" = TRAIN_FILE is prepared)
HARD_LEXICON_FILE = ""  # optional: hard terms, masked at HARD_TERM_MASK_PROB
FRESH_MASKS = True  # True: new masks (and noise) every epoch, reproducible from SEED; False: the same every epoch
TERM_MASK_PROB = 0.6  # chance that a lexicon term is masked as one span
HARD_TERM_MASK_PROB = 0.7  # the same for hard terms
MASK_RATE = 0.22  # share of maskable characters masked; random short spans make up what terms leave
MAX_SPAN = 3  # longest random span, in characters (or Latin words)
MAX_CHARS = 200  # longest example, in characters, cut at sentence ends
NOISE = 0.0  # share of unmasked characters dropped or replaced, like OCR damage
VALID_RATIO = 0.05  # with VALID_FILE="": share of documents held out for validation, masked once
DOCUMENTS = "lines"  # .txt: "lines" (a document per line) or "paragraphs" (blank lines between documents)
TEXT_FIELD = "text"  # raw .jsonl: the field holding the text
GROUP_FIELD = ""  # raw .jsonl: a field (patient or record id) whose documents all stay on one side of the split
# --- LoRA: low-rank adapters on a frozen model (needs peft; best/ and latest/ hold merged full weights) ---
LORA_RANK = 0  # 0 = full fine-tuning; 8 or 16 train adapters of that rank only (see README, "LoRA")
LORA_ALPHA = 16.0  # adapter scale: the update is multiplied by LORA_ALPHA / LORA_RANK
LORA_DROPOUT = 0.05  # dropout on the adapters' input, 0 to 1
LORA_TARGET_MODULES = "q,k,v,o,wi,wi_0,wi_1,wo"  # T5 / mT5 linear layers given adapters, comma-separated
# --- schedule --------------------------------------------------------------------------------
PER_DEVICE_BATCH_SIZE = 4  # examples per forward pass on each GPU (4 fits mT5-base on 6 GB)
GRADIENT_ACCUMULATION_STEPS = 8  # forward passes per optimizer step; effective batch = 4 x 8 = 32
OPTIMIZER = "adafactor"  # "adafactor" (T5's own, least memory), "adamw_torch", or "adamw_8bit" (needs bitsandbytes)
LEARNING_RATE = 1e-3  # 1e-3 suits Adafactor with a fixed rate; use about 3e-4 with AdamW
LR_SCHEDULER = "constant_with_warmup"  # any transformers scheduler name: "linear", "cosine", ...
WARMUP_STEPS = 500  # optimizer steps of linear warm-up
NUM_EPOCHS = 3.0  # passes over TRAIN_FILE (ignored when MAX_STEPS > 0)
MAX_STEPS = -1  # optimizer steps in total; -1 = use NUM_EPOCHS
EVAL_STEPS = 1000  # optimizer steps between evaluations
SAVE_STEPS = 1000  # optimizer steps between checkpoints; a multiple of EVAL_STEPS
LOGGING_STEPS = 100  # optimizer steps between progress lines
SAVE_TOTAL_LIMIT = 3  # checkpoints kept (the best one is never deleted)
MAX_NONFINITE_STEPS = 10  # steps in a row with NaN/inf loss or gradients (each one skipped) before stopping
# --- evaluation and early stopping -----------------------------------------------------------
GEN_EVAL_SAMPLES = 200  # validation examples restored at each evaluation (as restore.py would); 0 = loss only
NUM_BEAMS = 4  # beam search width for those restorations, saved with the model for restore.py (see README)
METRIC_FOR_BEST_MODEL = "eval_loss"  # picks best/, drives early stopping: eval_loss, span_accuracy, char_accuracy, exact_match
EARLY_STOPPING_START_STEP = 6000  # evaluations before this step never stop training
EARLY_STOPPING_PATIENCE = 5  # evaluations without improvement before stopping
EARLY_STOPPING_THRESHOLD = 0.001  # smallest change of the metric that counts as improvement
# --- hardware --------------------------------------------------------------------------------
GPU_MEMORY_GB = 6.0  # the GPU's memory; the plan printed before training checks that the run fits in it
PRECISION = "auto"  # "auto" (bf16 where the GPU supports it, else fp32), "bf16", "fp32", "fp16" (risky)
GRADIENT_CHECKPOINTING = True  # on GPU: about 20% more compute for far less activation memory
DATALOADER_WORKERS = 0  # background processes preparing batches; 0 = in the training process
TORCH_COMPILE = False  # True: torch.compile the model; the first steps compile for minutes (see README, bench.py --only knobs)
FSDP = ""  # several GPUs or machines: "full_shard", "shard_grad_op" or "hybrid_shard" shard the model (FSDP2, see README); "" = a copy per process
# --- output ----------------------------------------------------------------------------------
OUTPUT_DIR = "runs/domainfocus"  # checkpoints, best/, latest/, metrics.jsonl, train.log
RESUME = "auto"  # "auto" = newest complete checkpoint in OUTPUT_DIR; a checkpoint path; None = fresh
OVERWRITE_OUTPUT_DIR = False  # with RESUME=None: True clears an earlier run's outputs first
RESUME_CHANGES = "warn"  # when batch size, processes, training data or MAX_STEPS differ from the checkpoint: "warn" or "refuse"
TENSORBOARD = False  # True: also log to OUTPUT_DIR/tensorboard, local only (needs: pip install tensorboard)
SEED = 42  # random seed for initialisation, sampling and dropout

# The embedded demo: a tiny T5 built on this machine and the bundled data, about 2 minutes on 2 CPU cores.
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
import hashlib
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import time

# The engine's light modules are imported here; torch, transformers and the modules built on them
# (callbacks.py, domainfocus/trainer.py) take seconds, so they are imported only once the checks
# have passed and a run or a plan starts: a typo in the constants is answered in a tenth of a second.
from domainfocus.checkpoints import (SaveFailed, base_facts, clear_previous_run, data_facts, evaluation_facts,
                                     find_checkpoint, nothing_left_to_train, recover_interrupted_saves,
                                     save_atomically, sharding_problem, write_json_atomically, write_text)
from domainfocus.console import setup_logging
from domainfocus.curves import plot_run
from domainfocus.data import (DataError, MaskedExamples, MaskingCollator, check_data, first_examples, load_data,
                              texts_of)
from domainfocus.distributed import agree, is_main_process, leave_process_group
from domainfocus.memory import memory_plan, planned_state, report_memory
from domainfocus.modeling import adapter_problem, attach_lora, load_model, lora_problem, model_saver, trim_model
from domainfocus.report import (masking_record, masking_text, model_card, plan_record, plan_text, run_record, schedule,
                                summarize)
from domainfocus.restoration import Decoding
from domainfocus.settings import (SETTINGS, TINY_MODEL, ConfigError, check_config, help_text, lora_targets,
                                  metric_for_best_model, parse_value)

EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_SAVE_FAILED = 2, 3, 4  # and 128 + signal number after an interrupt
logger = logging.getLogger("domainfocus")


def default_config():
    """The constants block above, as a dict of every setting the schema in domainfocus/settings.py names."""
    return {setting.name: globals()[setting.name] for setting in SETTINGS}


def parse_arguments(argv, config):
    """Apply `--demo` and then every `--NAME=value` to `config`; returns (config, flags)."""
    config = dict(config)
    flags = {argument[2:] for argument in argv if argument in ("--demo", "--check")}
    if "demo" in flags:
        config.update(DEMO)
    for argument in argv:
        if argument in ("--demo", "--check"):
            continue
        match = re.fullmatch(r"--([A-Za-z0-9_]+)=(.*)", argument, flags=re.S)
        if not match:
            raise ConfigError(f"{argument!r}: arguments look like --NAME=value (for example --EVAL_STEPS=500), "
                              "--demo, --check, --help or --plot OUTPUT_DIR.")
        name, text = match.groups()
        if name not in config:
            close = difflib.get_close_matches(name.upper(), list(config), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else "; see the constants at the top of train.py."
            raise ConfigError(f"--{name}: unknown constant{hint}")
        config[name] = parse_value(name, text, default_config()[name])
    return config, flags


def main(argv):

    if argv[:1] == ["--plot"]:
        return plot_only(argv[1:])
    if "--help" in argv or "-h" in argv:
        print(help_text(__file__, parse_arguments([a for a in argv if a not in ("--help", "-h")], default_config())[0]))
        return 0
    # 1. Constants, command line, data files: every check that needs no model, within a second.
    config, flags = parse_arguments(argv, default_config())
    check_config(config)
    check_data(config)
    checkpoint, skipped = find_checkpoint(config["OUTPUT_DIR"], config["RESUME"], config["OVERWRITE_OUTPUT_DIR"])
    problem = checkpoint and sharding_problem(checkpoint, config["FSDP"], int(os.environ.get("WORLD_SIZE", "1")))
    if problem:
        raise ConfigError(f"{checkpoint} cannot be resumed with FSDP={config['FSDP']!r} in "
                          f"{os.environ.get('WORLD_SIZE', '1')} process(es): {problem}; or start afresh in another "
                          "OUTPUT_DIR.")
    problem = checkpoint and lora_problem(checkpoint, config["LORA_RANK"], config["LORA_ALPHA"], lora_targets(config))
    if problem:
        raise ConfigError(f"{checkpoint} cannot be resumed with LORA_RANK={config['LORA_RANK']}: {problem}; or start "
                          "afresh in another OUTPUT_DIR.")
    if "check" in flags:
        for note in skipped:
            print(note)
        return check_plan(config, checkpoint)
    output_dir = config["OUTPUT_DIR"]
    if config["RESUME"] is None and is_main_process():
        clear_previous_run(output_dir)  # before train.log is opened: it belongs to the new run
    setup_logging(output_dir)
    for note in skipped:
        logger.warning(note)
    logger.info("Resuming from %s." % checkpoint if checkpoint else "Starting a fresh run in %s." % output_dir)
    from callbacks import GracefulInterrupt

    interrupt = GracefulInterrupt(quit_now)
    interrupt.install()
    return train(config, flags, checkpoint, interrupt)


def plot_only(arguments):
    """--plot OUTPUT_DIR: redraw training_curves.png from metrics.jsonl, without training."""
    if len(arguments) != 1 or not os.path.isfile(os.path.join(arguments[0], "metrics.jsonl")):
        raise ConfigError("--plot needs one OUTPUT_DIR that holds a metrics.jsonl, e.g. --plot runs/demo.")
    output_dir = arguments[0]
    constants = {}
    if os.path.isfile(os.path.join(output_dir, "run_config.json")):
        with open(os.path.join(output_dir, "run_config.json"), encoding="utf-8") as handle:
            constants = json.load(handle).get("constants", {})
    metric = metric_for_best_model({"METRIC_FOR_BEST_MODEL": constants.get("METRIC_FOR_BEST_MODEL", "eval_loss")})
    print(plot_run(output_dir, constants.get("EARLY_STOPPING_START_STEP"), metric))
    return 0


def check_plan(config, checkpoint):
    """--check: tokenize the data and print what the run would do; exit 0 when everything is ready."""
    from domainfocus.trainer import choose_precision

    setup_logging(None)
    choose_precision(config["PRECISION"])
    tokenizer, model = load_model(config["MODEL_NAME_OR_PATH"], checkpoint, config["TRAIN_FILE"],
                                  config["INPUT_COLUMN"], config["TARGET_COLUMN"], config["SEED"], weights=False)
    with tempfile.TemporaryDirectory() as folder:  # a raw run's validation set: nothing is written to OUTPUT_DIR
        _, counts, _ = load_data(config, tokenizer, folder, sample=50_000)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun sets it; plan for N GPUs with WORLD_SIZE=N
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    plan = schedule(counts["train"]["examples"], config, world_size)
    half = config["PRECISION"] != "fp32"
    print(plan_text(config, counts, plan, planned_state(model, config, half), checkpoint, world_size))
    masking = masking_record(config, counts["train"])
    print(masking_text(masking))
    longest = (counts["train"]["longest_input"], counts["train"]["longest_target"])
    print("\n".join(memory_plan(model, config, half, longest, world_size, local_size)[0]))
    print("Ready: run the same command without --check to train.")
    record = plan_record(model, config, half, longest, world_size, local_size)
    record.update(masking, duplicates_removed=counts["train"].get("duplicates"),
                  valid_in_training=counts["validation"]["in_training"],
                  valid_near_training=counts["validation"]["near_training"])
    print(json.dumps(record))  # for scripts: the last line
    return 0


def train(config, flags, checkpoint, interrupt):
    """Model and data, Trainer, resume checks, training, and what a finished run leaves behind."""
    import torch
    from transformers import set_seed

    from domainfocus.trainer import choose_precision, training_arguments

    output_dir = config["OUTPUT_DIR"]
    started = time.monotonic()
    if is_main_process():
        recover_interrupted_saves(output_dir)
    # 2. Model and data: the tokenizer decides the tokens, so it comes first.
    precision_flags = choose_precision(config["PRECISION"])
    set_seed(config["SEED"])
    if config["TENSORBOARD"]:  # transformers 5 takes the TensorBoard folder from this variable
        os.environ["TENSORBOARD_LOGGING_DIR"] = os.path.join(output_dir, "tensorboard")
    args = training_arguments(config, precision_flags)
    tokenizer, model, datasets_by_split, counts, valid_file = load_model_and_data(config, checkpoint, args,
                                                                                  precision_flags)
    # 3. Trainer and the DomainFocus callbacks.
    evaluation = {"metric_for_best_model": args.metric_for_best_model, **evaluation_facts(config, valid_file)}
    trainer, save_model, early_stopping = build_trainer(config, args, tokenizer, model, datasets_by_split, counts,
                                                        valid_file, interrupt, evaluation)
    logger.info("Training %s on %d examples (%d for evaluation), effective batch %d, on %s.",
                config["MODEL_NAME_OR_PATH"], counts["train"]["examples"], counts["validation"]["examples"],
                args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
                "GPU" if torch.cuda.is_available() else "CPU")
    if not ready_to_resume(config, trainer, checkpoint, evaluation):
        leave_process_group()
        return 0
    if args.should_save:
        write_json_atomically(os.path.join(output_dir, "run_config.json"),
                              run_record(config, flags, checkpoint, counts, args.world_size))
    # 4. Train. From here on the first Ctrl+C means "finish the step, save, stop".
    interrupt.arm()
    trainer.train(resume_from_checkpoint=checkpoint)
    exit_code = finish(config, trainer, save_model, early_stopping, checkpoint, interrupt, time.monotonic() - started)
    leave_process_group()
    return exit_code


def load_model_and_data(config, checkpoint, args, precision_flags):
    """(tokenizer, model, datasets, counts, the validation file: for raw text the one masked once and
    kept in OUTPUT_DIR); the memory plan is printed before the weights load."""

    # A trimmed run resumes with the trimmed vocabulary its checkpoint holds. A LoRA checkpoint holds
    # only the adapters: its base is built again from MODEL_NAME_OR_PATH (and trimmed again).
    lora = config["LORA_RANK"] > 0
    if lora and checkpoint:
        logger.info("Resuming the LoRA adapters of %s on %s, loaded again as the frozen base.", checkpoint,
                    config["MODEL_NAME_OR_PATH"])
    base_checkpoint = None if lora else checkpoint
    name = base_checkpoint if config["TRIM_VOCAB"] and base_checkpoint else config["MODEL_NAME_OR_PATH"]
    model_source = (name, base_checkpoint, config["TRAIN_FILE"], config["INPUT_COLUMN"], config["TARGET_COLUMN"],
                    config["SEED"])
    trim = config["TRIM_VOCAB"] and not base_checkpoint
    # Shapes only at first (the tiny model is built whole): the memory plan comes before loading.
    tokenizer, model = load_model(*model_source, weights=trim or (name == TINY_MODEL and not base_checkpoint))
    if trim:
        try:
            tokenizer, model = trim_model(tokenizer, model, [
                text for path in (config["TRAIN_FILE"], config["VALID_FILE"]) if path
                for text in texts_of(path, config["INPUT_COLUMN"], config["TARGET_COLUMN"])])
        except ValueError as error:  # a tokenizer that is not SentencePiece
            raise ConfigError(f"TRIM_VOCAB=True: {error} Set TRIM_VOCAB=False for this model.") from None
    with args.main_process_first(desc="tokenizing"):  # under torchrun the others then read its cache
        datasets_by_split, counts, valid_file = load_data(config, tokenizer, config["OUTPUT_DIR"])
    if "mask_rate" in counts["train"]:  # raw text: how the masks come out (--check prints the same line)
        logger.info(masking_text(masking_record(config, counts["train"])).strip())
    report_memory(model, config, counts, precision_flags)
    if model.device.type == "meta":
        model = load_model(*model_source, tokenizer=tokenizer)[1]
    # Saved in generation_config.json with every checkpoint, best/ and latest/: restore.py decodes as evaluated,
    # and cuts long documents into windows the size of the training inputs.
    # A resumed run keeps the confidence calibration its last evaluation fitted until the next one.
    train, calibration = counts["train"], resumed_calibration(checkpoint)
    Decoding(num_beams=config["NUM_BEAMS"], max_input_length=config["MAX_INPUT_LENGTH"],
             max_new_tokens=config["MAX_TARGET_LENGTH"], whole_tokens=train["longest_input"],
             window_tokens=math.ceil(train["input_tokens"] / max(train["examples"], 1)), **calibration).save_to(model)
    if config["FSDP"]:
        model = shard(model, config["FSDP"], args, precision_flags)
    if lora:
        model = attach_lora(model, config["LORA_RANK"], config["LORA_ALPHA"], config["LORA_DROPOUT"],
                            lora_targets(config), bf16=precision_flags["bf16"])
        problem = checkpoint and adapter_problem(checkpoint, model)
        if problem:
            raise ConfigError(f"{checkpoint} cannot be resumed with LORA_TARGET_MODULES="
                              f"{config['LORA_TARGET_MODULES']!r}: {problem}; or start afresh in another OUTPUT_DIR.")
    return tokenizer, model, datasets_by_split, counts, valid_file


def shard(model, strategy, args, precision_flags):
    """FSDP: the model sharded over the processes torchrun or accelerate started (domainfocus/sharding.py)."""
    from domainfocus.sharding import shard_group_size, shard_model

    if args.world_size <= 1:
        logger.warning("FSDP=%r but this is a single process: nothing to shard the model with, so it trains whole. "
                       "Start several processes with torchrun or accelerate launch (see README).", strategy)
        return model
    local = int(os.environ.get("LOCAL_WORLD_SIZE", args.world_size))
    if strategy == "hybrid_shard" and args.world_size % local:
        raise ConfigError(f"FSDP='hybrid_shard' shards within each machine, but {args.world_size} processes do not "
                          f"divide into machines of {local}: start the same number on every machine.")
    group = shard_group_size(strategy, args.world_size, local)
    logger.info("FSDP=%r: each of %d processes holds 1/%d of the weights, gradients and optimizer state.", strategy,
                args.world_size, group)
    return shard_model(model, strategy, precision_flags["bf16"], args.device.type)


def build_trainer(config, args, tokenizer, model, datasets_by_split, counts, valid_file, interrupt, evaluation):
    """(DomainFocusTrainer with the DomainFocus callbacks, the function that saves best/ and latest/,
    the DelayedEarlyStopping among those callbacks). `evaluation`: what decides an evaluation's figures;
    early stopping and best/ compare only figures of the same."""
    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_callback import PrinterCallback

    from callbacks import (BestModelCallback, CurvesCallback, DelayedEarlyStopping, LiveProgressBar,
                           MetricsFileCallback, NonFiniteGuard, SafeDetailedProgressCallback)
    from domainfocus.trainer import DomainFocusTrainer

    output_dir = config["OUTPUT_DIR"]
    # Labels are padded with -100, so the loss covers real target tokens only.
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    if isinstance(datasets_by_split["train"], MaskedExamples):  # raw text: masked and tokenized batch by batch
        collator = MaskingCollator(tokenizer, collator, config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"])
    guard = NonFiniteGuard(config["MAX_NONFINITE_STEPS"])
    key = hashlib.sha256(json.dumps(evaluation, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    early_stopping = DelayedEarlyStopping(config["EARLY_STOPPING_START_STEP"], config["EARLY_STOPPING_PATIENCE"],
                                          config["EARLY_STOPPING_THRESHOLD"], evaluation=key)
    trainer = DomainFocusTrainer(
        model=model, args=args, train_dataset=datasets_by_split["train"],
        eval_dataset=datasets_by_split["validation"], processing_class=tokenizer,
        data_collator=collator,
        generation_examples=first_examples(valid_file, config["INPUT_COLUMN"], config["TARGET_COLUMN"],
                                          config["GEN_EVAL_SAMPLES"]),
        guard=guard,
        callbacks=[SafeDetailedProgressCallback(), LiveProgressBar(sys.stdout), early_stopping, guard,
                   MetricsFileCallback(os.path.join(output_dir, "metrics.jsonl")), interrupt,
                   CurvesCallback(output_dir, config["EARLY_STOPPING_START_STEP"], args.metric_for_best_model)],
    )
    trainer.remove_callback(PrinterCallback)
    save_model = model_saver(trainer.model, tokenizer)
    trainer.add_callback(BestModelCallback(
        os.path.join(output_dir, "best"), save_model, evaluation=key,
        write_card=lambda folder, step, metrics: write_text(os.path.join(folder, "README.md"),
                                                            model_card(config, counts, step, metrics))))
    return trainer, save_model, early_stopping


def resumed_calibration(checkpoint):
    """confidence_temperature and confidence_shift saved in the checkpoint, or none."""
    try:
        with open(os.path.join(checkpoint or "", "generation_config.json"), encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {name: float(saved[name]) for name in ("confidence_temperature", "confidence_shift")
            if isinstance(saved.get(name), (int, float))}


def ready_to_resume(config, trainer, checkpoint, evaluation):
    """Record what a later resume must match; report (or refuse) what changed since `checkpoint`.
    False when the checkpoint has nothing left to train."""
    from callbacks import ResumeCheck

    args = trainer.args
    max_steps = trainer.set_initial_training_values(args, trainer.get_train_dataloader())[-1]
    resume_check = ResumeCheck(effective_batch_size=args.train_batch_size * args.gradient_accumulation_steps *
                               args.world_size, processes=args.world_size,
                               max_steps=max_steps, learning_rate=config["LEARNING_RATE"], seed=config["SEED"],
                               **data_facts(config), **base_facts(config["MODEL_NAME_OR_PATH"], trainer.model),
                               evaluation=tuple(evaluation), **evaluation)
    trainer.add_callback(resume_check)
    changed = checkpoint and resume_check.differences(checkpoint)
    if changed and config["RESUME_CHANGES"] == "refuse":
        raise ConfigError(f"{checkpoint} was trained with other settings ({'; '.join(changed)}): restore them, "
                          "or set RESUME_CHANGES='warn' to continue with the new ones.")
    if changed:
        logger.warning("Changed since %s: %s. Continuing with the new settings (RESUME_CHANGES='warn').",
                       checkpoint, "; ".join(changed))
    nothing_left = checkpoint and nothing_left_to_train(checkpoint, max_steps, config["EARLY_STOPPING_PATIENCE"])
    if nothing_left:
        logger.info("Nothing to train: %s", nothing_left)
    return not nothing_left


def finish(config, trainer, save_model, early_stopping, checkpoint, interrupt, seconds):
    """latest/, the curves and the summary after training; returns the exit code."""
    import torch

    args, output_dir, guard = trainer.args, config["OUTPUT_DIR"], trainer.guard
    # After NaN/inf the weights still hold the last good update (bad ones were skipped); only
    # those are worth a latest/, and best/ stays as it is.
    # (Sharded, each process checks its own shard and they agree; then all of them gather the weights.)
    good_weights = not guard.stop_reason or bool((guard.last_good_step or checkpoint) and not agree(args, not all(
        torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all() for p in trainer.model.parameters())))
    weights = save_model.gather() if good_weights else None
    saved_latest = bool(args.should_save and good_weights)
    if saved_latest:
        save_atomically(lambda folder: save_model(folder, weights), os.path.join(output_dir, "latest"))
    if args.should_save and os.path.isfile(os.path.join(output_dir, "metrics.jsonl")):
        plot_run(output_dir, config["EARLY_STOPPING_START_STEP"], args.metric_for_best_model)
    start_step = int(checkpoint.rsplit("-", 1)[-1]) if checkpoint and re.search(r"-\d+$", checkpoint) else 0
    truncated = agree(args, trainer.truncated_examples, total=True)
    summarize(trainer, early_stopping, interrupt, output_dir, start_step, saved_latest, seconds, guard.stop_reason,
              truncated, (config["MAX_INPUT_LENGTH"], config["MAX_TARGET_LENGTH"]))
    if guard.stop_reason:
        logger.error("Training diverged; best/ is untouched%s. Likely causes: fp16 overflow, which T5 and mT5 are "
                     "prone to (use PRECISION='bf16' or 'fp32'), or a learning rate too high (lower LEARNING_RATE, "
                     "raise WARMUP_STEPS); then resume from a checkpoint before the first bad step with RESUME=PATH.",
                     f" and latest/ holds the last good update (step {guard.last_good_step})" if saved_latest and
                     guard.last_good_step else "")
        return EXIT_DIVERGED
    return interrupt.exit_code


def quit_now(signal_number, frame=None):
    """Ctrl+C or SIGTERM during start-up, or a second one: exit 130 or 143 at once.

    Written with os._exit rather than an exception: Python drops an exception raised while a
    __del__ runs, which would swallow the signal. Leaving at once is safe because every save on
    disk is either complete or, being incomplete, ignored by resume.
    """
    print("Interrupted. Saves already on disk are intact; run the same command again to resume.",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    logging.shutdown()
    os._exit(128 + signal_number)


def run(argv):
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    signal.signal(signal.SIGINT, quit_now)
    signal.signal(signal.SIGTERM, quit_now)
    try:
        return main(argv)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SaveFailed as error:
        print(f"error: {error}; free disk space or fix the folder's permissions, then run the same command again "
              "to resume from the newest complete checkpoint.", file=sys.stderr)
        return EXIT_SAVE_FAILED


if __name__ == "__main__":
    exit_code = run(sys.argv[1:])
    # Everything is saved or abandoned by now. While Python shuts down it puts back the default
    # handlers, so a late Ctrl+C would kill the process by signal instead of exiting with this code.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(exit_code)
