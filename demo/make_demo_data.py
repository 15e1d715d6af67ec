"""Regenerate the bundled demo data set: python demo/make_demo_data.py

Writes demo/train.jsonl and demo/valid.jsonl: short clinical-style sentences in Chinese and
English built from a small term list, with whole terms masked as T5 span-corruption examples.
Also writes the raw side for masks drawn while training (train.py with LEXICON_FILE):
demo/corpus.txt, 3,000 such sentences unmasked (one document per line), demo/corpus_valid.txt,
300 held-out ones, and demo/lexicon.txt, the terms. Validation shares no sentence with training,
not even one alike but for its numbers: each case is validated in a template it is never trained in.
The terms follow fixed clinical associations (disease -> symptom, drug, examination), so the
masked terms can be restored from context and a tiny model learns measurably within minutes.
Deterministic: the same seed always writes the same files.
"""

import json
import random
from pathlib import Path

SEED = 20261123
TRAIN_EXAMPLES = 3000
VALID_EXAMPLES = 300
TERM_MASK_PROBABILITY = 0.6

# (disease, symptom, drug, examination) in Chinese and in English.
CASES_ZH = [
    ("急性心肌梗死", "胸骨后压榨性疼痛", "阿司匹林", "心电图"),
    ("社区获得性肺炎", "发热伴咳嗽咳痰", "头孢曲松", "胸部X线"),
    ("2型糖尿病", "多饮多尿", "二甲双胍", "糖化血红蛋白"),
    ("原发性高血压", "头晕头痛", "氨氯地平", "动态血压监测"),
    ("缺血性脑卒中", "一侧肢体无力", "阿替普酶", "头颅CT"),
    ("慢性阻塞性肺疾病", "活动后气促", "噻托溴铵", "肺功能检查"),
    ("急性阑尾炎", "转移性右下腹痛", "头孢呋辛", "腹部超声"),
    ("缺铁性贫血", "面色苍白乏力", "硫酸亚铁", "血清铁蛋白"),
    ("甲状腺功能亢进症", "心悸多汗", "甲巯咪唑", "甲状腺功能"),
    ("支气管哮喘", "发作性喘息", "布地奈德", "支气管舒张试验"),
    ("类风湿关节炎", "晨僵", "甲氨蝶呤", "类风湿因子"),
    ("消化性溃疡", "上腹部节律性疼痛", "奥美拉唑", "胃镜"),
]
CASES_EN = [
    ("myocardial infarction", "crushing chest pain", "aspirin", "electrocardiogram"),
    ("community-acquired pneumonia", "fever and productive cough", "ceftriaxone", "chest radiograph"),
    ("type 2 diabetes", "polyuria and polydipsia", "metformin", "HbA1c"),
    ("essential hypertension", "occipital headache", "amlodipine", "ambulatory blood pressure monitoring"),
    ("ischaemic stroke", "unilateral limb weakness", "alteplase", "head CT"),
    ("chronic obstructive pulmonary disease", "exertional dyspnoea", "tiotropium", "spirometry"),
    ("acute appendicitis", "right lower quadrant pain", "cefuroxime", "abdominal ultrasound"),
    ("iron deficiency anaemia", "pallor and fatigue", "ferrous sulfate", "serum ferritin"),
    ("hyperthyroidism", "palpitations and sweating", "methimazole", "thyroid function tests"),
    ("bronchial asthma", "episodic wheezing", "budesonide", "bronchodilator reversibility test"),
    ("rheumatoid arthritis", "morning stiffness", "methotrexate", "rheumatoid factor"),
    ("peptic ulcer disease", "epigastric pain", "omeprazole", "gastroscopy"),
]
TEMPLATES_ZH = [
    "患者{age}岁，因{symptom}入院，经{exam}确诊为{disease}，给予{drug}治疗后好转。",
    "{disease}患者常表现为{symptom}，首选检查为{exam}。",
    "入院诊断：{disease}。主诉：{symptom}{days}天。处理：{drug}。",
    "本例{disease}经{exam}证实，予{drug}口服，{symptom}明显缓解。",
    "对于{symptom}的患者，应警惕{disease}，及时完善{exam}。",
]
TEMPLATES_EN = [
    "A {age}-year-old patient presented with {symptom}; {exam} confirmed {disease} and {drug} was started.",
    "Patients with {disease} typically report {symptom}, and {exam} is the first-line investigation.",
    "Diagnosis: {disease}. Complaint: {symptom} for {days} days. Plan: {drug}.",
    "In this case {exam} confirmed {disease}; after {drug} the {symptom} resolved.",
    "In a patient with {symptom}, consider {disease} and arrange {exam} promptly.",
]
FIELDS = ("disease", "symptom", "drug", "exam")


def pairs(held_out):
    """Every (cases, case, template) of both languages whose template the validation set holds out for
    that case (`held_out`), or every other one. Each case gives one of its templates to validation
    only (template number = case number modulo the templates), so no validation sentence, and no
    sentence alike but for its numbers, occurs in training: the model must carry what it learned of a
    case over to a template it never saw the case in."""
    return [(case, template) for cases, templates in ((CASES_ZH, TEMPLATES_ZH), (CASES_EN, TEMPLATES_EN))
            for number, case in enumerate(cases) for index, template in enumerate(templates)
            if (index == number % len(templates)) == held_out]


def make_example(rng, allowed):
    """One example: a filled template with some whole terms replaced by sentinels."""
    case, template = rng.choice(allowed)
    terms = dict(zip(FIELDS, case))
    masked = [name for name in FIELDS if "{" + name + "}" in template and rng.random() < TERM_MASK_PROBABILITY]
    if not masked:
        masked = [rng.choice([name for name in FIELDS if "{" + name + "}" in template])]
    # Sentinels are numbered in the order the masked terms appear in the text.
    masked.sort(key=lambda name: template.index("{" + name + "}"))
    values = {"age": rng.randint(18, 90), "days": rng.randint(1, 14)}
    targets = []
    for index, name in enumerate(masked):
        values[name] = f"<extra_id_{index}>"
        targets.append(f"<extra_id_{index}>{terms[name]}")
    for name in FIELDS:
        values.setdefault(name, terms[name])
    targets.append(f"<extra_id_{len(masked)}>")
    return {"inputs": template.format(**values), "targets": "".join(targets)}


def make_sentence(rng, allowed):
    """One unmasked sentence, for demo/corpus.txt or demo/corpus_valid.txt."""
    case, template = rng.choice(allowed)
    return template.format(age=rng.randint(18, 90), days=rng.randint(1, 14), **dict(zip(FIELDS, case)))


def write_jsonl(path, examples):
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")


def main():
    rng = random.Random(SEED)
    folder = Path(__file__).resolve().parent
    training, validation = pairs(held_out=False), pairs(held_out=True)
    write_jsonl(folder / "train.jsonl", [make_example(rng, training) for _ in range(TRAIN_EXAMPLES)])
    write_jsonl(folder / "valid.jsonl", [make_example(rng, validation) for _ in range(VALID_EXAMPLES)])
    raw = random.Random(SEED + 1)
    sentences = [make_sentence(raw, training) for _ in range(TRAIN_EXAMPLES)]
    (folder / "corpus.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    held_out = [make_sentence(raw, validation) for _ in range(VALID_EXAMPLES)]
    (folder / "corpus_valid.txt").write_text("\n".join(held_out) + "\n", encoding="utf-8")
    terms = sorted({term for case in CASES_ZH + CASES_EN for term in case})
    (folder / "lexicon.txt").write_text("\n".join(terms) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
