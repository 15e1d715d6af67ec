"""OCR in and out on the stained fixture page (tests/fixtures/ocr): which confidence threshold tells
stained characters from clean ones, and the whole pipeline, Tesseract -> read_ocr -> restoration ->
write, counted against the page's ground truth.

    python -m benchmarks.ocr [--model FOLDER]    # alone; bench.py runs it as bench_ocr(options, folder)
"""

import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks.common import HERE, print_table

FIXTURES = os.path.join(HERE, "tests", "fixtures", "ocr")
THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Which confidence decides: the glyph's where given, the word's only, or the lower (read_ocr's rule).
RULES = {"glyph, else word": lambda glyph: glyph.confidence if glyph.confidence is not None else glyph.word_confidence,
         "word only": lambda glyph: glyph.word_confidence,
         "lower of the two": lambda glyph: min(value for value in (glyph.confidence, glyph.word_confidence, 1.0)
                                               if value is not None)}


def load_truth(folder=FIXTURES):
    import json

    with open(os.path.join(folder, "page.truth.json"), encoding="utf-8") as handle:
        return json.load(handle)["characters"]


def glyph_boxes(word):
    """Each glyph's box: its own where the engine gave one, else its word's box cut in equal widths."""
    if word.box is None:
        return [glyph.box for glyph in word.glyphs]
    left, top, right, bottom = word.box
    step = (right - left) / max(1, len(word.glyphs))
    return [glyph.box or (left + step * index, top, left + step * (index + 1), bottom)
            for index, glyph in enumerate(word.glyphs)]


def overlap(box, other):
    width = min(box[2], other[2]) - max(box[0], other[0])
    height = min(box[3], other[3]) - max(box[1], other[1])
    return max(0.0, width) * max(0.0, height)


def matched_glyphs(page, truth):
    """[(Glyph, the truth character it covers most, whether it covers a stained one)] of the page."""
    rows = []
    for words in page.words:
        for word in words:
            for glyph, box in zip(word.glyphs, glyph_boxes(word)):
                if box is None:
                    continue
                areas = [(overlap(box, character["box"]), character) for character in truth]
                best = max(areas, key=lambda pair: pair[0])
                stained = any(area > 0.25 * (character["box"][2] - character["box"][0])
                              * (character["box"][3] - character["box"][1])
                              for area, character in areas if character["stained"])
                rows.append((glyph, best[1] if best[0] > 0 else None, stained))
    return rows


def threshold_table(path, truth):
    """For each rule and threshold: stained glyphs counted lost, clean glyphs counted lost (those read
    right and those misread)."""
    from domainfocus.ocr import read_ocr

    rows = matched_glyphs(read_ocr(path, 0.5), truth)
    stained = [glyph for glyph, _, hit in rows if hit]
    clean_right = [glyph for glyph, character, hit in rows if not hit and character and glyph.text == character["char"]]
    clean_wrong = [glyph for glyph, character, hit in rows if not hit and not (character and glyph.text == character["char"])]
    table = []
    def lost(glyphs, rule, threshold):
        return sum(rule(glyph) is not None and rule(glyph) < threshold for glyph in glyphs)

    for name, rule in RULES.items():
        for threshold in THRESHOLDS:
            found, right, wrong = (lost(glyphs, rule, threshold) for glyphs in (stained, clean_right, clean_wrong))
            table.append((name, threshold, f"{found}/{len(stained)}", f"{right}/{len(clean_right)}", f"{wrong}/{len(clean_wrong)}",
                          f"{found / max(1, len(stained)) - right / max(1, len(clean_right)):+.2f}"))
    return table


def confidence_summary(path, truth):
    """Median glyph and word confidence of clean-and-right, clean-but-misread and stained glyphs."""
    from statistics import median

    from domainfocus.ocr import read_ocr

    groups = {"clean, read right": [], "clean, misread": [], "stained": []}
    for glyph, character, hit in matched_glyphs(read_ocr(path, 0.5), truth):
        name = "stained" if hit else "clean, read right" if character and glyph.text == character["char"] else \
            "clean, misread"
        groups[name].append(glyph)

    def cell(values):
        return f"{median(values):.2f}" if values else "-"

    return [(name, len(glyphs), cell([g.confidence for g in glyphs if g.confidence is not None]),
             cell([g.word_confidence for g in glyphs if g.word_confidence is not None]))
            for name, glyphs in groups.items()]


def ocr_outputs(folder):
    """(hOCR path, ALTO path, how they were made): Tesseract on the fixture image when installed, else
    the committed outputs."""
    if not shutil.which("tesseract"):
        return (os.path.join(FIXTURES, "page.hocr"), os.path.join(FIXTURES, "page.alto.xml"),
                "tesseract is not installed: the committed outputs of tests/fixtures/ocr")
    base = os.path.join(folder, "page")
    subprocess.run(["tesseract", os.path.join(FIXTURES, "page.png"), base, "-l", "chi_sim", "-c", "hocr_char_boxes=1",
                    "alto", "hocr"], check=True, stderr=subprocess.DEVNULL)
    version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    return base + ".hocr", base + ".xml", f"{version} run here on tests/fixtures/ocr/page.png"


def pipeline(path, restorer, threshold, folder):
    """read_ocr -> restoration by the model -> write; counts against the truth."""
    from domainfocus.ocr import read_ocr

    truth = load_truth()
    page = read_ocr(path, threshold)
    results = restorer.restore_documents(page.documents, alternatives=3)
    out = os.path.join(folder, "restored" + os.path.splitext(path)[1])
    page.write(results, out)
    read_ocr(out, threshold)  # what was written reads back
    rows = matched_glyphs(page, truth)
    stained = [(glyph, character) for glyph, character, hit in rows if hit]
    clean = [(glyph, character) for glyph, character, hit in rows if not hit]
    touched = [(glyph, character) for glyph, character in clean if glyph.restored is not None]
    return {"stained glyphs": len(stained), "detected as lost": sum(glyph.lost for glyph, _ in stained),
            "restored": sum(glyph.restored is not None for glyph, _ in stained),
            "restored right": sum(glyph.restored is not None and character is not None
                                  and glyph.restored == character["char"] for glyph, character in stained),
            "clean glyphs": len(clean), "clean counted lost": sum(glyph.lost for glyph, _ in clean),
            "clean changed": len(touched),
            "clean changed to the truth": sum(character is not None and glyph.restored == character["char"]
                                              for glyph, character in touched),
            "spans": sum(len(document.spans) for document in page.documents)}


def bench_ocr(options, folder, threshold=None):
    from benchmarks.decoding import trained_demo_model
    from domainfocus.ocr import DEFAULT_THRESHOLD

    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    truth = load_truth()
    hocr, alto, source = ocr_outputs(folder)
    print(f"\nOCR on the stained fixture page ({sum(c['stained'] for c in truth)} of {len(truth)} characters "
          f"stained); OCR: {source}.\n")
    print("Median confidences of the glyphs Tesseract wrote (glyph: x_conf, word: x_wconf, both on 0-1):\n")
    print_table(["glyphs", "count", "glyph confidence", "word confidence"], confidence_summary(hocr, truth))
    print("\nGlyphs counted lost at each threshold (hOCR; ALTO from Tesseract carries the word's only):\n")
    print_table(["rule", "threshold", "stained lost", "clean read right, lost", "clean misread, lost",
                 "stained share - clean share"], threshold_table(hocr, truth))
    from domainfocus.restoration import Restorer

    model_folder = getattr(options, "model", None) or trained_demo_model(folder)
    restorer = Restorer.load(model_folder, "cpu", [])  # once, for both files
    rows = []
    for path in (alto, hocr):
        counts = pipeline(path, restorer, threshold, folder)
        rows.append((os.path.basename(path), *counts.values()))
    print(f"\nThe pipeline at threshold {threshold} with the model {model_folder}:\n")
    print_table(["file", *counts.keys()], rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the demo trained here first, about 2 minutes)")
    parser.add_argument("--threshold", type=float)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        sys.exit(bench_ocr(arguments, work, arguments.threshold))
