"""Shared fixtures: small data files cut from the bundled demo, and a helper that runs train.py.

Run the suite with:  python -m pytest tests
"""

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def write_lines(path, lines):
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """300 training and 60 validation examples from the demo set: fast to tokenize and train on."""
    folder = tmp_path_factory.mktemp("data")
    train_lines = (ROOT / "demo" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:300]
    valid_lines = (ROOT / "demo" / "valid.jsonl").read_text(encoding="utf-8").splitlines()[:60]
    return write_lines(folder / "train.jsonl", train_lines), write_lines(folder / "valid.jsonl", valid_lines)


def offline_environment(home):
    environment = dict(os.environ)
    environment.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                       PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return environment


def tiny_run_arguments(small_data, output_dir, **overrides):
    """Command-line overrides for a short run of the tiny model on the small data."""
    train_file, valid_file = small_data
    settings = dict(TRAIN_FILE=train_file, VALID_FILE=valid_file, OUTPUT_DIR=output_dir, PER_DEVICE_BATCH_SIZE=8,
                    MAX_STEPS=20, EVAL_STEPS=10, SAVE_STEPS=10, LOGGING_STEPS=5, WARMUP_STEPS=2,
                    EARLY_STOPPING_START_STEP=0, GEN_EVAL_SAMPLES=16)
    settings.update(overrides)
    return ["--demo"] + [f"--{name}={value}" for name, value in settings.items()]


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory):
    """One Hugging Face cache for the whole session, so tokenization caches carry across runs."""
    return tmp_path_factory.mktemp("hf-home")


def run_train_process(arguments, hf_home, timeout=300, environment=None):
    """Run `python train.py ARGS...` offline; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, arguments)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**offline_environment(hf_home), **(environment or {})})


@pytest.fixture
def run_train(hf_home):
    return lambda arguments, timeout=300, environment=None: run_train_process(arguments, hf_home, timeout,
                                                                                environment)


@pytest.fixture
def start_train(tmp_path, hf_home):
    """Start `python train.py ARGS...` (or another command) in the background; returns the Popen.

    Its output goes to tmp_path/console.log; `environment` adds variables, `command` replaces
    `python train.py` (for torchrun).
    """
    processes = []

    def start(arguments, environment=None, command=(sys.executable, str(ROOT / "train.py"))):
        log = open(tmp_path / "console.log", "w")
        process = subprocess.Popen([*command, *map(str, arguments)], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, text=True,
                                   env={**offline_environment(hf_home), **(environment or {})})
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, small_data, hf_home):
    """One 20-step run of the tiny model, evaluated and saved every 10 steps: (OUTPUT_DIR, process)."""
    output = tmp_path_factory.mktemp("run") / "out"
    result = run_train_process(tiny_run_arguments(small_data, output), hf_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result


# --- an mT5-shaped model and template-heavy clinical text, as real users have them -------------

CLINICAL_CASES = [  # disease, symptom, drug, examination
    ("急性心肌梗死", "胸骨后压榨性疼痛", "阿司匹林", "心电图"), ("社区获得性肺炎", "发热伴咳嗽咳痰", "头孢曲松", "胸部X线"),
    ("Ⅱ型糖尿病", "多饮多尿", "二甲双胍", "糖化血红蛋白"), ("原发性高血压", "头晕头痛", "氨氯地平", "动态血压监测"),
    ("缺血性脑卒中", "一侧肢体无力", "阿替普酶", "头颅CT"), ("慢性阻塞性肺疾病", "活动后气促", "噻托溴铵", "肺功能检查"),
    ("急性阑尾炎", "转移性右下腹痛", "头孢呋辛", "腹部超声"), ("缺铁性贫血", "面色苍白乏力", "硫酸亚铁", "血清铁蛋白"),
    ("Ⅲ度房室传导阻滞", "黑矇晕厥", "异丙肾上腺素", "动态心电图"), ("焦虑障碍", "失眠心悸", "苯二氮䓬类", "焦虑量表"),
]
RARE_CASE = ("鱻龘病", "鱻龘样皮疹", "鱻龘素", "鱻龘试验")  # too rare for the vocabulary: <unk> to mT5's tokenizer
CLINICAL_TEMPLATES = [
    "患者{sex}，{age}岁，因{symptom}{days}天入院。查体：体温{temperature}℃，血压{pressure}mmHg。",
    "入院诊断：{disease}。予{drug}{dose}㎎口服，每日{times}次。",
    "既往Ⅱ型糖尿病病史{years}年，NYHA心功能Ⅲ级，否认药物过敏史。",
    "复查{exam}提示{disease}，建议继续{drug}治疗，{days}天后门诊随访。",
    "出院医嘱：{drug}½片，每日{times}次；如有{symptom}，及时就诊！",
    "{disease}患者常表现为{symptom}，首选检查为{exam}。",
    "（{year}年{month}月）体温{temperature}℃，予{drug}{dose}㎎静脉滴注，{symptom}缓解。",
]


def clinical_sentences(count=2400, seed=0):
    """Template-heavy clinical notes with the compatibility characters real notes carry (℃ ㎎ Ⅱ Ⅲ ½),
    full-width punctuation, rare characters and many sentences that repeat word for word."""
    rng = random.Random(seed)
    lines = []
    for _ in range(count):
        disease, symptom, drug, exam = RARE_CASE if rng.random() < 0.002 else rng.choice(CLINICAL_CASES)
        lines.append(rng.choice(CLINICAL_TEMPLATES).format(
            sex=rng.choice("男女"), age=rng.randint(18, 90), symptom=symptom, days=rng.randint(1, 14),
            temperature=rng.choice(["36.8", "37.5", "38.5", "39.2"]),
            pressure=rng.choice(["120/80", "140/90", "160/95"]),
            disease=disease, drug=drug, dose=rng.choice([5, 10, 20, 40]), times=rng.randint(1, 3),
            years=rng.randint(1, 20), exam=exam, year=rng.randint(2019, 2026), month=rng.randint(1, 12)))
    return lines


def clinical_lexicon():
    return sorted({term for case in CLINICAL_CASES for term in case})


@pytest.fixture(scope="session")
def mt5_folder(tmp_path_factory):
    """A tiny mT5-shaped model folder (NFKC SentencePiece, multi-character pieces, <unk> for unseen
    characters, an untied LM head), built in seconds from clinical notes and the demo corpus."""
    from domainfocus.modeling import build_tiny_mt5

    texts = clinical_sentences() + (ROOT / "demo" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    return build_tiny_mt5(texts, str(tmp_path_factory.mktemp("mt5") / "model"))


@pytest.fixture(scope="session")
def clinical_data(tmp_path_factory):
    """train.jsonl / valid.jsonl masked from the clinical notes by prepare.py's rules (lexicon terms whole)."""
    from domainfocus.masking import Lexicon, Masker

    folder = tmp_path_factory.mktemp("clinical")
    masker = Masker(Lexicon(clinical_lexicon(), []), 0.6, 0.7, 0.22, 3, 0.0, 0)
    sentences = list(dict.fromkeys(clinical_sentences(seed=1)))  # distinct sentences, split by content
    files = []
    for name, part in (("train", sentences[:-60]), ("valid", sentences[-60:])):
        examples = [json.dumps(masker.example(sentence)[0], ensure_ascii=False) for sentence in part]
        files.append(write_lines(folder / f"{name}.jsonl", examples))
    return tuple(files)


@pytest.fixture(scope="session")
def mt5_run(tmp_path_factory, mt5_folder, clinical_data, hf_home):
    """20 steps of full fine-tuning of the mT5-shaped model on the clinical notes: OUTPUT_DIR."""
    output = tmp_path_factory.mktemp("mt5-run") / "out"
    result = run_train_process(tiny_run_arguments(clinical_data, output, MODEL_NAME_OR_PATH=mt5_folder,
                                                  LEARNING_RATE=3e-3), hf_home)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


# --- checks on what a run left behind ----------------------------------------------------------

def weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def same_weights(first, second):
    import torch

    a, b = weights(first), weights(second)
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def trainer_state(checkpoint):
    return json.loads((checkpoint / "trainer_state.json").read_text())


def as_if_trained(model, spread):
    """Draw a peft model's LoRA B matrices at random, as training would leave them: they start at zero,
    which would hide a wrong merge."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, spread)
    return model.eval()


def learned(folder, examples=16):
    """True when the weights in `folder` are finite and predict demo validation targets clearly better
    (loss under 80%) than the same model untrained. NaN, zeroed or never-trained weights fail; so
    does a model that decodes to some string but learned nothing."""
    import math

    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    torch.manual_seed(0)
    untrained = type(model)(model.config).eval()
    lines = [json.loads(line) for line in (ROOT / "demo" / "valid.jsonl").read_text(encoding="utf-8").splitlines()]
    lines = lines[:examples]
    batch = tokenizer([line["inputs"] for line in lines], text_target=[line["targets"] for line in lines],
                      return_tensors="pt", padding=True)
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    with torch.inference_mode():
        trained_loss, untrained_loss = (candidate(**batch).loss.item() for candidate in (model, untrained))
    return math.isfinite(trained_loss) and trained_loss < 0.8 * untrained_loss


def wait_for(path, pattern, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and re.search(pattern, path.read_text(encoding="utf-8", errors="replace")):
            return
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared in {path}")
