"""LoRA (LORA_RANK > 0): small adapter checkpoints that resume exactly, and best/ and latest/ as
merged full weights that load and restore without peft."""

import json
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, as_if_trained, offline_environment, same_weights, tiny_run_arguments, trainer_state, wait_for

LORA = dict(LORA_RANK=8, MAX_STEPS=30, EVAL_STEPS=10, SAVE_STEPS=10, LOGGING_STEPS=5,
            METRIC_FOR_BEST_MODEL="char_accuracy", LEARNING_RATE=3e-3)

# Loads a folder with transformers alone (importing peft fails), restores the first validation
# examples as training evaluated them, and prints char_accuracy.
WITHOUT_PEFT = """
import json, sys
sys.modules["peft"] = None
sys.path.insert(0, ".")
from domainfocus.damage import from_sentinels, target_lengths
from domainfocus.restoration import Restorer
from domainfocus.spans import restoration_metrics
folder, valid, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
pairs = [json.loads(line) for line in open(valid, encoding="utf-8").read().splitlines()[:count]]
restorer = Restorer.load(folder)
results = restorer.restore_documents([from_sentinels(p["inputs"], target_lengths(p["targets"])) for p in pairs])
print(restoration_metrics([r["prediction"] for r in results], [p["targets"] for p in pairs])["char_accuracy"])
"""


def test_lora_checkpoints_are_small_resume_exactly_and_best_needs_no_peft(start_train, run_train, tmp_path,
                                                                          small_data, finished_run, hf_home):
    straight = run_train(tiny_run_arguments(small_data, tmp_path / "straight", **LORA))
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    assert "LoRA rank 8 on k, o, q, v, wi, wo" in straight.stdout
    output = tmp_path / "interrupted"
    process = start_train(tiny_run_arguments(small_data, output, **LORA))
    wait_for(tmp_path / "console.log", r"step 1[4-8]/30")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    resumed = run_train(tiny_run_arguments(small_data, output, **LORA))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming the LoRA adapters of" in resumed.stdout
    # Exactly where the uninterrupted run ends: the base is built again, the adapters come back.
    assert same_weights(output / "latest", tmp_path / "straight" / "latest")

    # Checkpoints hold the adapters and their optimizer state, not a second copy of the model.
    checkpoint = output / "checkpoint-30"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    full = finished_run[0] / "checkpoint-20"

    def size(folder):
        return sum(path.stat().st_size for path in folder.iterdir() if path.suffix in (".safetensors", ".pt"))

    assert size(checkpoint) < size(full) / 2, (size(checkpoint), size(full))

    # best/ holds merged full weights (and the adapter alone in adapter/): loaded without peft it
    # restores exactly as the evaluation that chose it did.
    best = output / "best"
    assert (best / "model.safetensors").is_file() and (best / "adapter" / "adapter_config.json").is_file()
    assert "LoRA rank 8 on" in (best / "README.md").read_text(encoding="utf-8")  # the model card says how
    record = json.loads((best / "best_model.json").read_text())
    result = subprocess.run([sys.executable, "-c", WITHOUT_PEFT, str(best), str(small_data[1]), "16"], cwd=ROOT,
                            capture_output=True, text=True, env=offline_environment(hf_home), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(record["value"], abs=1e-9)
    assert record["value"] > 0  # the adapters learned something

    # Adapters of another shape cannot be loaded into this run: refused in one line, nothing touched.
    other = run_train(tiny_run_arguments(small_data, output, **{**LORA, "LORA_RANK": 4, "MAX_STEPS": 40}))
    assert other.returncode == 2 and "LORA_RANK=8" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert trainer_state(checkpoint)["global_step"] == 30


def test_the_merged_weights_compute_what_base_plus_adapter_compute(tmp_path, small_data):
    """best/ (plain transformers) and base + best/adapter (peft) give the same logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    import train as tool
    from domainfocus.modeling import attach_lora, build_tiny_t5, model_saver

    tokenizer, model = build_tiny_t5(str(small_data[0]), "inputs", "targets", 42)
    model = as_if_trained(attach_lora(model, 4, tool.LORA_ALPHA, tool.LORA_DROPOUT, ["q", "v", "wi"]), 0.5)
    model_saver(model, tokenizer)(str(tmp_path / "best"))
    batch = tokenizer(["患者<extra_id_0>入院。", "Plan: <extra_id_0>."], text_target=["<extra_id_0>胸痛", "<extra_id_0>x"],
                      return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
        merged = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "best").eval()
        base = build_tiny_t5(str(small_data[0]), "inputs", "targets", 42)[1]
        again = PeftModel.from_pretrained(base, tmp_path / "best" / "adapter").eval()
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-4)  # W + BA rounds differently
        assert torch.allclose(again(**batch).logits, expected, atol=1e-5)
        plain = build_tiny_t5(str(small_data[0]), "inputs", "targets", 42)[1].eval()
        assert not torch.allclose(plain(**batch).logits, expected, atol=1e-3)  # the adapters do count


def test_the_memory_plan_counts_the_adapters_peft_creates(small_data):
    import train as tool
    from domainfocus.modeling import attach_lora, build_tiny_t5
    from domainfocus.memory import static_memory

    config = {**tool.default_config(), "LORA_RANK": 8}
    _, model = build_tiny_t5(str(small_data[0]), "inputs", "targets", 42)
    parameters = model.num_parameters()
    planned = static_memory(model, "adamw_torch", 8, config["LORA_TARGET_MODULES"].split(","), half=True)
    model = attach_lora(model, 8, tool.LORA_ALPHA, tool.LORA_DROPOUT, config["LORA_TARGET_MODULES"].split(","))
    trainable, _ = model.get_nb_trainable_parameters()
    tensors = sum(parameter.requires_grad for parameter in model.parameters())
    assert planned["gradients"] == 4 * trainable  # fp32 gradients of exactly the adapters
    assert planned["weights"] == 2 * parameters + 4 * trainable  # frozen in bf16, adapters in fp32
    assert planned["optimizer state"] == 8 * trainable + 4 * tensors  # AdamW: two moments and a step each


def test_without_lora_nothing_needs_peft(tmp_path, small_data, hf_home):
    """LORA_RANK=0 trains with peft impossible to import."""
    arguments = tiny_run_arguments(small_data, tmp_path / "out", MAX_STEPS=3, EVAL_STEPS=3, SAVE_STEPS=3,
                                   GEN_EVAL_SAMPLES=2)
    code = ("import runpy, sys; sys.modules['peft'] = None; sys.argv = ['train.py', *sys.argv[1:]]; "
            "runpy.run_path('train.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, *map(str, arguments)], cwd=ROOT, capture_output=True,
                            text=True, env=offline_environment(hf_home), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "latest" / "model.safetensors").is_file()


@pytest.mark.parametrize("overrides, message", [
    ({"LORA_RANK": -1}, "the rank must be 0 (off) or more"),
    ({"LORA_RANK": 8, "LORA_DROPOUT": 1.5}, "the dropout at least 0 and below 1"),
    ({"LORA_RANK": 8, "LORA_TARGET_MODULES": "q,query"}, "LORA_TARGET_MODULES='q,query': use T5's linear layers"),
    ({"LORA_RANK": 8, "LORA_TARGET_MODULES": "wi_0"}, "none of LORA_TARGET_MODULES='wi_0' is a layer of this model"),
])
def test_a_bad_lora_setting_is_one_line_and_exit_2(run_train, tmp_path, small_data, overrides, message):
    result = run_train(tiny_run_arguments(small_data, tmp_path / "out", **overrides))
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]


def test_the_installed_peft_is_one_the_installed_transformers_accepts():
    """requirements.txt pins them together: transformers refuses older peft in its own adapter code."""
    import peft
    from packaging.version import Version
    from transformers.integrations.peft import MIN_PEFT_VERSION

    assert Version(peft.__version__) >= Version(MIN_PEFT_VERSION)


def test_a_changed_base_is_told_apart_from_the_same_base_loaded_again(small_data):
    """The resume check's base_model fact: equal for the base built again, different for another."""
    import torch

    import train as tool
    from domainfocus.checkpoints import base_facts
    from domainfocus.modeling import attach_lora, build_tiny_t5

    def facts(change=0.0):
        model = build_tiny_t5(str(small_data[0]), "inputs", "targets", 42)[1]
        with torch.no_grad():
            model.shared.weight[0, 0] += change
        lora = attach_lora(model, 4, tool.LORA_ALPHA, tool.LORA_DROPOUT, tool.LORA_TARGET_MODULES.split(","))
        return base_facts("tiny-local-t5", lora)

    assert facts() == facts() and facts() != facts(0.01)
    assert base_facts("tiny-local-t5", build_tiny_t5(str(small_data[0]), "inputs", "targets", 42)[1]) == {}
