"""FSDP on a GPU machine: the checks tests/test_sharding.py makes on CPU processes, run where they
matter, with what only a GPU has (NCCL, bf16 compute, activation checkpointing), and the memory
plan of --check against the memory each GPU really used.

    python -m benchmarks.sharding_check --processes 2        # on a machine with 2 or more GPUs

Runs offline, on a tiny mT5-shaped model built here and an mt5-large-shaped one with random weights
(shapes are what memory depends on). Prints one line per check and a table; exit code 1 when a
check fails. Also runs on CPU processes (gloo), without the memory table.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def environment(folder):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": os.path.join(folder, "hf-home"),
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def torchrun(processes, port):
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={port}",
            os.path.join(HERE, "train.py")]


def arguments(model, output, **overrides):
    settings = dict(TRAIN_FILE=os.path.join(HERE, "demo", "train.jsonl"),
                    VALID_FILE=os.path.join(HERE, "demo", "valid.jsonl"), OUTPUT_DIR=output,
                    MODEL_NAME_OR_PATH=model, FSDP="full_shard", OPTIMIZER="adamw_torch", LEARNING_RATE=3e-3,
                    PER_DEVICE_BATCH_SIZE=8, GRADIENT_ACCUMULATION_STEPS=2, MAX_STEPS=30, EVAL_STEPS=10,
                    SAVE_STEPS=10, LOGGING_STEPS=1, WARMUP_STEPS=2, SAVE_TOTAL_LIMIT=5, GEN_EVAL_SAMPLES=32,
                    EARLY_STOPPING_START_STEP=0, GRADIENT_CHECKPOINTING=True)
    settings.update(overrides)
    return ["--demo"] + [f"--{name}={value}" for name, value in settings.items()]


class GpuMemory:
    """The most memory each GPU showed in use (nvidia-smi, every 0.2 s) while the block ran."""

    def __init__(self):
        self.peak, self.running = {}, False

    def __enter__(self):
        self.running = True
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def poll(self):
        while self.running:
            try:
                output = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                        capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in output.strip().splitlines():
                index, used = (int(part) for part in line.split(","))
                self.peak[index] = max(self.peak.get(index, 0), used * 2 ** 20)
            time.sleep(0.2)

    def __exit__(self, *exception):
        self.running = False
        self.thread.join()


def weights(folder):
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "model.safetensors"))


def largest_difference(first, second):
    a, b = weights(first), weights(second)
    if a.keys() != b.keys():
        return float("inf")
    return max((a[name].float() - b[name].float()).abs().max().item() for name in a)


def worker(launcher, rank):
    """The pid of torchrun's worker process of `rank` (read from /proc: Linux)."""
    with open(f"/proc/{launcher.pid}/task/{launcher.pid}/children") as handle:
        children = handle.read().split()
    for child in children:
        with open(f"/proc/{child}/environ", "rb") as handle:
            if f"RANK={rank}".encode() in handle.read().split(b"\0"):
                return int(child)
    raise RuntimeError(f"no worker of rank {rank} under torchrun")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="processes (GPUs) to shard over")
    parser.add_argument("--folder", help="work folder (default: a temporary one)")
    options = parser.parse_args(argv)
    folder = options.folder or tempfile.mkdtemp(prefix="sharding-check-")
    sys.path.insert(0, HERE)
    import torch

    from domainfocus.modeling import build_tiny_mt5

    on_gpu = torch.cuda.is_available()
    print(f"{options.processes} processes on {'GPU: ' + torch.cuda.get_device_name() if on_gpu else 'CPU'}, "
          f"torch {torch.__version__}; work folder {folder}")
    with open(os.path.join(HERE, "demo", "corpus.txt"), encoding="utf-8") as handle:
        tiny = build_tiny_mt5(handle.read().splitlines(), os.path.join(folder, "tiny-mt5"))
    env, n, failures = environment(folder), options.processes, []

    def check(name, ok, detail=""):
        print(f"{'PASS' if ok else 'FAIL'}  {name}{': ' + detail if detail else ''}", flush=True)
        if not ok:
            failures.append(name)

    # 1. An uninterrupted sharded run, and the same run stopped by SIGTERM to its last process, resumed.
    straight = os.path.join(folder, "straight")
    result = subprocess.run(torchrun(n, 29701) + arguments(tiny, straight), env=env, capture_output=True, text=True)
    check(f"sharded run ({'bf16, activation checkpointing' if on_gpu else 'fp32 on CPU'}, AdamW)",
          result.returncode == 0,
          result.stderr[-2000:] if result.returncode else "")
    interrupted = os.path.join(folder, "interrupted")
    with open(os.path.join(folder, "interrupted.log"), "w") as log:
        launcher = subprocess.Popen(torchrun(n, 29702) + arguments(tiny, interrupted), env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        train_log = os.path.join(interrupted, "train.log")
        while launcher.poll() is None and not (os.path.exists(train_log) and re.search(
                r"step (1[2-9]|2\d)/30", open(train_log, encoding="utf-8").read())):
            time.sleep(0.1)
        os.kill(worker(launcher, n - 1), signal.SIGTERM)
        launcher.wait(timeout=600)
    text = open(os.path.join(folder, "interrupted.log"), encoding="utf-8", errors="replace").read()
    stopped = re.findall(r"Latest weights \(step (\d+)\)", text)
    check("a SIGTERM to one process stops all at one step, with latest/", len(stopped) == 1, f"steps {stopped}")
    if stopped:
        from transformers import AutoModelForSeq2SeqLM

        AutoModelForSeq2SeqLM.from_pretrained(os.path.join(interrupted, "latest"))
        check("latest/ equals the checkpoint both stopped at",
              largest_difference(os.path.join(interrupted, "latest"),
                                 os.path.join(interrupted, f"checkpoint-{stopped[0]}")) == 0)
    resumed = subprocess.run(torchrun(n, 29703) + arguments(tiny, interrupted), env=env, capture_output=True,
                             text=True)
    difference = largest_difference(os.path.join(interrupted, "latest"), os.path.join(straight, "latest")) \
        if resumed.returncode == 0 else float("inf")
    check("the resumed run ends on the uninterrupted run's weights", difference == 0,
          f"largest difference {difference:.3g} (NCCL may reduce in another order: compare with the next line)")
    again = os.path.join(folder, "again")
    subprocess.run(torchrun(n, 29704) + arguments(tiny, again), env=env, capture_output=True, text=True)
    print(f"      two uninterrupted runs differ by {largest_difference(os.path.join(again, 'latest'), os.path.join(straight, 'latest')):.3g}")

    # 2. The evaluation's restoration metrics against restore.py in one process.
    records = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"), encoding="utf-8")]
    evaluation = [record for record in records if record.get("step") == 30 and "eval_span_accuracy" in record]
    subset = os.path.join(folder, "subset.jsonl")
    with open(os.path.join(HERE, "demo", "valid.jsonl"), encoding="utf-8") as source, \
            open(subset, "w", encoding="utf-8") as target:
        target.writelines(source.readlines()[:32])
    scored = subprocess.run([sys.executable, os.path.join(HERE, "restore.py"), "--model",
                             os.path.join(straight, "checkpoint-30"), "--input", subset, "--output",
                             os.path.join(folder, "restored.jsonl")], env=env, capture_output=True, text=True)
    metrics = json.loads(scored.stdout.strip().splitlines()[-1]) if scored.returncode == 0 else {}
    same = bool(evaluation) and all(abs(metrics.get(name, -1) - evaluation[0][f"eval_{name}"]) < 1e-4
                                    for name in ("span_accuracy", "char_accuracy", "exact_match"))
    check("evaluation under sharding equals restore.py in one process", same,
          f"eval {[evaluation[0].get('eval_span_accuracy') if evaluation else None]}, restore.py "
          f"{metrics.get('span_accuracy')}")

    # 3. Memory: an mt5-large-shaped model (random weights, a 32,128-token vocabulary), planned and used.
    if on_gpu:
        from transformers import AutoTokenizer, MT5Config, MT5ForConditionalGeneration

        large = os.path.join(folder, "mt5-large-shaped")
        tokenizer = AutoTokenizer.from_pretrained(tiny)
        config = MT5Config(vocab_size=32128, d_model=1024, d_ff=2816, num_layers=24, num_heads=16, d_kv=64,
                           tie_word_embeddings=False, decoder_start_token_id=tokenizer.pad_token_id)
        MT5ForConditionalGeneration(config).save_pretrained(large)
        tokenizer.save_pretrained(large)
        rows = []
        for processes in sorted({1, n}):
            settings = dict(MAX_STEPS=6, EVAL_STEPS=6, SAVE_STEPS=6, PER_DEVICE_BATCH_SIZE=4,
                            GRADIENT_ACCUMULATION_STEPS=1, GEN_EVAL_SAMPLES=16, GPU_MEMORY_GB=80,
                            FSDP="full_shard" if processes > 1 else "")
            plan = subprocess.run([sys.executable, os.path.join(HERE, "train.py"), "--check"] + arguments(
                large, os.path.join(folder, f"memory-{processes}"), **settings), env={**env, "WORLD_SIZE": str(
                    processes), "LOCAL_WORLD_SIZE": str(processes)}, capture_output=True, text=True)
            planned = json.loads(plan.stdout.strip().splitlines()[-1])
            with GpuMemory() as used:
                run = subprocess.run(torchrun(processes, 29710 + processes) + arguments(
                    large, os.path.join(folder, f"memory-{processes}"), **settings), env=env, capture_output=True,
                    text=True)
            rows.append((processes, planned["total_bytes"], planned.get("evaluation_bytes") or 0,
                         max(used.peak.values(), default=0), run.returncode))
        print("\n| processes | planned step per GPU | planned evaluation per GPU | used per GPU (nvidia-smi peak) | rc |")
        print("| --- | --- | --- | --- | --- |")
        for processes, step, evaluation, peak, code in rows:
            print(f"| {processes} | {step / 2**30:.2f} GB | {evaluation / 2**30:.2f} GB | {peak / 2**30:.2f} GB | {code} |")
    print(f"\n{len(failures)} check(s) failed" + (": " + "; ".join(failures) if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
