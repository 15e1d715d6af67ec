"""One home for a run's files on disk: atomic saves and their recovery after an interrupt, finding
the checkpoint to resume from (and whether anything is left to train), clearing an earlier run,
the small JSON and text writes, and the resume facts: what a checkpoint was trained and evaluated
with (data, masking, evaluation settings, LoRA base), recorded in it and compared on resume.

A checkpoint is only ever replaced by a complete one: a save goes to a temporary folder and is
renamed into place, so a Ctrl+C, a crash or a full disk at any moment leaves loadable weights."""

import json
import logging
import os
import re
import secrets
import shutil

from domainfocus.data import file_fingerprint, masking_mode
from domainfocus.settings import ConfigError
from domainfocus.sharding import SHARDED_FOLDER

logger = logging.getLogger("domainfocus")


class SaveFailed(Exception):
    """A save could not be written (disk full, no permission); earlier saves are intact."""


def write_error(error):
    """The reason a write failed, in a few words. A full disk surfaces as OSError from Python,
    RuntimeError from torch.save and SafetensorError from safetensors, so any exception counts."""
    return error.strerror if isinstance(error, OSError) and error.strerror else f"{type(error).__name__}: {error}"


def save_atomically(save_function, target):
    """Write a folder through `save_function(temporary_folder)`, then swap it into `target`.

    A crash or a second Ctrl+C while writing leaves the previous `target` untouched; the only
    window without `target` lies between two renames, and `recover_interrupted_saves` mends it.
    A full disk or a missing permission raises SaveFailed and also leaves `target` untouched.
    """
    target = os.path.abspath(target)
    temporary, previous = target + ".tmp", target + ".old"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        save_function(temporary)
    except Exception as error:
        shutil.rmtree(temporary, ignore_errors=True)
        raise SaveFailed(f"could not write {target}: {write_error(error)}") from error
    if os.path.isdir(target):
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
    os.replace(temporary, target)
    shutil.rmtree(previous, ignore_errors=True)


def recover_interrupted_saves(folder):
    """Undo what an interrupted `save_atomically` left behind in `folder`."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.endswith(".tmp"):
            shutil.rmtree(path, ignore_errors=True)
        elif name.endswith(".old"):
            target = path[: -len(".old")]
            if os.path.isdir(target):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.replace(path, target)
                logger.warning("Restored %s from the copy kept during an interrupted save.", target)


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_file_atomically(path, data):
    """Write `data` (str as UTF-8, or bytes) to a new file beside `path`, then rename it over `path`:
    a reader sees the old file or the new one, never half of one. Flushed to disk before the rename;
    the usual permissions (umask applies)."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(descriptor, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def write_json_atomically(path, payload):
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
    os.replace(temporary, path)


def checkpoint_problem(path):
    """Why `path` cannot be resumed from, or None when it is complete and readable.

    Written by hand: transformers' get_last_checkpoint also returns a checkpoint that a crash left
    half-written. trainer_state.json is the last file the Trainer writes; the weights and the
    optimizer state are checked for truncation without loading them (a header and a zip index).
    """
    import zipfile

    from safetensors import safe_open  # reads only the header; torch is not needed

    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as handle:
            json.load(handle)
    except FileNotFoundError:
        return "incomplete, interrupted while saving (no trainer_state.json)"
    except (OSError, ValueError):
        return "trainer_state.json is damaged"
    weights = [name for name in os.listdir(path) if name.endswith(".safetensors")]
    if not weights:
        return "no model weights (*.safetensors)"
    # A sharded run (FSDP) keeps the optimizer state with each process's shard of the weights in
    # sharded/; its index, .metadata, is written last, once every process has written its shard.
    if os.path.isdir(os.path.join(path, SHARDED_FOLDER)):
        if not os.path.isfile(os.path.join(path, SHARDED_FOLDER, ".metadata")):
            return "incomplete, interrupted while saving its shards (no sharded/.metadata)"
        state = ["scheduler.pt"]
    else:
        state = ["optimizer.pt", "scheduler.pt"]
    for name in weights + state:
        try:
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(path, name), "numpy"):
                    pass
            else:
                zipfile.ZipFile(os.path.join(path, name)).close()
        except Exception:  # safetensors and zipfile raise several types for a damaged file
            return f"{name} is missing or damaged"
    return None


def sharding_problem(checkpoint, fsdp, processes):
    """Why a run with FSDP=`fsdp` in `processes` processes cannot resume `checkpoint`, or None. A
    sharded checkpoint keeps its optimizer state in shards only a sharded run reads back; an
    unsharded one keeps it whole, which this tool does not shard on resume."""
    saved_sharded = os.path.isdir(os.path.join(checkpoint, SHARDED_FOLDER))
    sharding = bool(fsdp) and processes > 1
    if saved_sharded and not sharding:
        return "it was saved sharded (FSDP over several processes), so resume it under torchrun with FSDP set"
    if sharding and not saved_sharded:
        return "it was saved unsharded, so resume it with FSDP='' (the optimizer state is not sharded on resume)"
    return None


# What a run writes into OUTPUT_DIR besides its checkpoints (RESUME=None with OVERWRITE_OUTPUT_DIR clears them).
OUTPUT_FILES = ("best", "latest", "metrics.jsonl", "train.log", "run_config.json", "training_curves.png",
                "reliability.png", "validation.jsonl", "tensorboard")


def find_checkpoint(output_dir, resume, overwrite=False):
    """(checkpoint to resume from or None for a fresh start, [skipped damaged checkpoints]) for RESUME
    `resume` in `output_dir`. Refuses to clobber a finished run unless `overwrite` (OVERWRITE_OUTPUT_DIR)."""
    if resume not in (None, "auto"):
        problem = checkpoint_problem(resume) if os.path.isdir(resume) else "no such folder"
        if problem:
            raise ConfigError(f"RESUME={resume}: cannot resume from it ({problem}); use RESUME='auto' or another one.")
        return resume, []
    checkpoints = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = re.fullmatch(r"checkpoint-(\d+)", name)  # the Trainer's folder names
            if match:
                checkpoints.append((int(match.group(1)), os.path.join(output_dir, name)))
    skipped = []
    if resume == "auto":
        for _, path in sorted(checkpoints, reverse=True):
            problem = checkpoint_problem(path)
            if not problem:
                return path, skipped
            skipped.append(f"Skipping {path}: {problem}; trying the one before it.")
        # A fresh start here would overwrite best/ and mix two runs in metrics.jsonl.
        earlier = [name for name in ("best", "latest", "metrics.jsonl") if os.path.exists(os.path.join(output_dir, name))]
        if earlier:
            damaged = "; ".join(f"{os.path.basename(path)}: {checkpoint_problem(path)}" for _, path in
                                sorted(checkpoints, reverse=True)) or "none left"
            raise ConfigError(f"OUTPUT_DIR={output_dir} holds an earlier run ({', '.join(earlier)}) but no checkpoint to "
                              f"resume from (checkpoints skipped: {damaged}): to start over in it set RESUME=None and "
                              "OVERWRITE_OUTPUT_DIR=True, or choose another OUTPUT_DIR.")
        return None, skipped
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ConfigError(f"OUTPUT_DIR={output_dir} already holds a run: set RESUME='auto' to continue it, "
                          "choose another OUTPUT_DIR, or add --OVERWRITE_OUTPUT_DIR=True to start over.")
    return None, []


def clear_previous_run(output_dir):
    """RESUME=None with OVERWRITE_OUTPUT_DIR: remove an earlier run's outputs, nothing else."""
    for name in os.listdir(output_dir) if os.path.isdir(output_dir) else []:
        if name.startswith("checkpoint") or name in OUTPUT_FILES:
            path = os.path.join(output_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def nothing_left_to_train(checkpoint, max_steps, patience):
    """Why resuming `checkpoint` would train nothing (schedule done or stopped early), else None.

    Without this check the Trainer runs one step past the end of a finished schedule, and an
    early-stopped run trains until its next evaluation only to stop again.
    """
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    if state["global_step"] >= max_steps:
        return (f"{checkpoint} already reached step {state['global_step']} of {max_steps}; "
                "raise MAX_STEPS or NUM_EPOCHS to train further.")
    early_stopping = state.get("stateful_callbacks", {}).get("DelayedEarlyStopping", {}).get("attributes", {})
    if early_stopping.get("patience_counter", 0) >= patience:
        return (f"{checkpoint} was stopped early after {early_stopping['patience_counter']} evaluations without "
                "improvement; raise EARLY_STOPPING_PATIENCE to continue it.")
    return None


# The constants that decide the masks of a raw-text run (a change on resume is reported).
MASKING_CONSTANTS = ("FRESH_MASKS", "TERM_MASK_PROB", "HARD_TERM_MASK_PROB", "MASK_RATE", "MAX_SPAN", "MAX_CHARS",
                     "NOISE", "VALID_RATIO", "DOCUMENTS", "TEXT_FIELD", "GROUP_FIELD")


def data_facts(config):
    """What a resume must find unchanged about the data: the training file's fingerprint, and for
    raw text the lexicons and masking settings too."""
    if masking_mode(config) == "prepared":
        return {"training_data": file_fingerprint(config["TRAIN_FILE"])}
    files = [file_fingerprint(config[name]) for name in ("TRAIN_FILE", "LEXICON_FILE", "HARD_LEXICON_FILE")
             if config[name]]
    return {"training_data": "+".join(files), **{name: config[name] for name in MASKING_CONSTANTS}}


# The constants that decide what an evaluation measures, besides the metric and the validation data:
# figures taken with others are not comparable (a change on resume is reported, and best/ is compared
# afresh). SEED decides it only through the validation masks of raw text, which the data's fingerprint covers.
EVALUATION_CONSTANTS = ("GEN_EVAL_SAMPLES", "NUM_BEAMS", "MAX_INPUT_LENGTH", "MAX_TARGET_LENGTH")


def evaluation_facts(config, valid_file):
    """What the figures of an evaluation depend on: the validation examples (the file evaluated, for
    raw text the one masked once) and the evaluation constants, named as the resume check reports them."""
    return {"validation_data": file_fingerprint(valid_file), **{name.lower(): config[name] for name in EVALUATION_CONSTANTS}}


def base_facts(model_name, model):
    """With LoRA: which frozen base the adapters are trained on (its name and the checksum
    attach_lora took), for the resume check: a resume loads the base again from `model_name`."""
    checksum = getattr(model, "base_checksum", None)
    return {} if checksum is None else {"base_model": f"{model_name} (weights checksum {checksum:.10g})"}


def saved_facts(checkpoint, callback="ResumeCheck"):
    """The resume facts `checkpoint` was written with ({} for a checkpoint that predates them)."""
    with open(os.path.join(checkpoint, "trainer_state.json"), encoding="utf-8") as handle:
        saved = json.load(handle).get("stateful_callbacks", {}).get(callback, {})
    return saved.get("attributes", {}).get("facts", {})


def fact_changes(saved, facts):
    """One phrase per fact of `facts` that differs from `saved`, as "name old -> new"; a fact the
    checkpoint does not have (written before it existed) counts as unchanged."""
    return [f"{name} {saved[name]} -> {value}" for name, value in facts.items() if name in saved and saved[name] != value]

