"""The review page (domainfocus/review.py) as a clinician uses it, in a real headless Chromium:
keys move to the spans needing review, decisions are made by key, the export is training data in
spans.py's format; the filter, 5,000 documents, hostile text and a reload keep working.

Needs /usr/bin/chromium, /usr/bin/chromedriver and selenium; the browser tests skip without them,
and fail instead when DOMAINFOCUS_REQUIRE_BROWSER=1 (as CI sets it).

The README's screenshot comes from here too:  python tests/test_review_page.py docs/review-page.png
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script too (the screenshot)

from benchmarks.review import chromium_missing, start_chromium
from domainfocus.review import ReviewError, write_review_page
from domainfocus.spans import build_targets

EXPORT_NAME = "review-decisions.jsonl"
REVIEW_REASON = "confidence below 0.5"


# ---- Records as restore.py writes them, built from readable pieces ----

def restored_record(pieces, doc_id=None):
    """A restore.py record from pieces: plain text, or a span as a dict with the damaged "marker",
    the model's "text" ("" when left marked), "confidence", "review" and "alternatives". Offsets
    and ⟦ ⟧ are worked out as restoration.Restorer.result does, so the fixtures cannot drift."""
    inputs, restored, spans = "", "", []
    for piece in pieces:
        if isinstance(piece, str):
            inputs, restored = inputs + piece, restored + piece
            continue
        marker = piece["marker"]
        length = piece.get("length", len(marker) if set(marker) == {"□"} else None)
        span = {"text": piece["text"], "confidence": piece.get("confidence"), "review": piece.get("review", False)}
        if span["review"]:
            span["reason"] = piece.get("reason", REVIEW_REASON)
        span["alternatives"] = [{"text": text, "confidence": confidence} for text, confidence in piece.get("alternatives", [])]
        shown = piece["text"] or marker
        start = len(restored) + (1 if span["review"] else 0)
        restored += f"⟦{shown}⟧" if span["review"] else shown
        span.update(length=length, input_start=len(inputs), input_end=len(inputs) + len(marker),
                    start=start, end=start + len(shown))
        inputs += marker
        spans.append(span)
    record = {"inputs": inputs, "restored": restored, "spans": spans}
    return record if doc_id is None else {"id": doc_id, **record}


def clinic_records():
    """Six documents of mT5-realistic clinical Chinese: marker runs and sentinels, ℃, ㎎, Ⅲ,
    full-width punctuation, a repeated template sentence, a span left marked, a document that needs
    no review, one without an id, and a flagged text-to-text rewrite."""
    return [
        restored_record(["患者男，58岁，因“", {"marker": "□□", "text": "发热", "confidence": 0.97,
                                               "alternatives": [("咳嗽", 0.011)]},
                         "3天”入院，体温最高39.2℃。予",
                         {"marker": "□□□□", "text": "阿司匹林", "confidence": 0.31, "review": True,
                          "alternatives": [("氯吡格雷", 0.22), ("布洛芬片", 0.05)]},
                         "100㎎口服，每日一次。"], "adm-001"),
        restored_record(["诊断：2型糖尿病。糖化血红蛋白8.1%，予",
                         {"marker": "□□□□", "text": "二甲双胍", "confidence": 0.95, "alternatives": [("格列美脲", 0.02)]},
                         "500㎎，每日两次。患者神志清，精神可，饮食睡眠可。"], "adm-002"),
        restored_record(["慢性心力衰竭，NYHA心功能", {"marker": "<extra_id_0>", "length": 1, "text": "Ⅲ",
                                                    "confidence": 0.93, "alternatives": [("Ⅱ", 0.05)]},
                         "级。本例经", {"marker": "<extra_id_1>", "length": 5, "text": "血清铁蛋白", "confidence": 0.05893,
                                     "review": True, "alternatives": [("HbA1c", 2.872e-05)]},
                         "证实，予", {"marker": "<extra_id_2>", "length": 4, "text": "硫酸亚铁", "confidence": 0.741,
                                    "alternatives": [("蔗糖铁注", 0.12)]},
                         "口服。"], "adm-003"),
        restored_record(["术后第", {"marker": "□", "text": "", "confidence": None},
                         "天，切口Ⅱ/甲愈合，体温36.8℃。患者神志清，精神可，饮食睡眠可。复查",
                         {"marker": "□□□", "text": "血常规", "confidence": 0.44, "review": True,
                          "alternatives": [("尿常规", 0.31), ("肝功能", 0.09)]},
                         "未见异常。"], "adm-004"),
        restored_record(["患者神志清，精神可，饮食睡眠可。予",
                         {"marker": "□□□□", "text": "头孢曲松", "confidence": 0.91, "alternatives": [("头孢他啶", 0.04)]},
                         "2g静滴，每日一次。"]),  # no id: the page and the export call it 5
        {"id": "adm-006", "inputs": "将下列病历改写为规范表述：病人发烧三天，吃了退烧药。",
         "restored": "患者发热3天，自服退热药物。", "spans": [], "review": True,
         "reason": "generation stopped at max_new_tokens=64"},
    ]


def large_records(count=5000, first_flagged=119):
    """`count` documents from a few templates; the first span needing review is in document
    `first_flagged` (0-based), on the third page of fifty."""
    templates = [("患者神志清，精神可，体温", "36.5", "℃，予", "头孢曲松", "2g静滴。"),
                 ("诊断：2型糖尿病，予", "二甲", "双胍500㎎，", "每日两次", "。"),
                 ("NYHA心功能Ⅱ级，予", "呋塞米", "20㎎口服，", "监测电解质", "。")]
    records = []
    for number in range(count):
        before, first, middle, second, after = templates[number % len(templates)]
        flagged = number >= first_flagged and number % 7 == first_flagged % 7
        records.append(restored_record([
            before, {"marker": "□" * len(first), "text": first, "confidence": 0.96, "alternatives": [("不详", 0.01)]},
            middle, {"marker": "□" * len(second), "text": second, "confidence": 0.38 if flagged else 0.92,
                     "review": flagged, "alternatives": [("遵医嘱", 0.2)]}, after], f"doc-{number + 1}"))
    return records


# ---- The page without a browser ----

def test_records_are_embedded_so_that_no_text_can_end_the_script(tmp_path):
    record = restored_record(["</script><!--<script>", {"marker": "□□", "text": "发热", "confidence": 0.5}, "\u2028\u2029"])
    page = tmp_path / "review.html"
    write_review_page(page, [record], title="复核 <b>")
    text = page.read_text(encoding="utf-8")
    data = text.split('<script type="application/json"', 1)[1].split(">", 1)[1].split("</script>", 1)[0]
    assert "<" not in data and "\u2028" not in data and "\u2029" not in data
    assert json.loads(data)[0]["inputs"] == record["inputs"]  # the whole of it, up to the script's own end
    assert "<title>复核 &lt;b&gt;</title>" in text
    assert "http://" not in text and "https://" not in text  # nothing fetched: works offline, from disk
    assert [path.name for path in tmp_path.iterdir()] == ["review.html"]  # the temporary file was renamed


def test_records_without_offsets_are_refused_by_name(tmp_path):
    record = restored_record(["予", {"marker": "□□", "text": "阿司", "confidence": 0.9}, "。"], "doc-9")
    del record["spans"][0]["start"]
    with pytest.raises(ReviewError, match="doc-9.*span 0.*start"):
        write_review_page(tmp_path / "review.html", [record])
    assert not list(tmp_path.iterdir())


# ---- The page in a browser ----

@pytest.fixture
def browser(tmp_path):
    reason = chromium_missing()
    if reason:
        if os.environ.get("DOMAINFOCUS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"DOMAINFOCUS_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = start_chromium(tmp_path / "profile", downloads)
    driver.downloads = downloads
    yield driver
    driver.quit()


def open_page(driver, folder, records, name="review.html"):
    page = folder / name
    write_review_page(page, records)
    driver.get(page.as_uri())  # returns after the load event: the inline script has rendered page 1
    return page


def press(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def focused(driver):
    """(document, span) of the focused span, or None."""
    return driver.execute_script("const e = document.activeElement;"
                                 "return e && e.dataset.span !== undefined ? [+e.dataset.doc, +e.dataset.span] : null;")


def summary(driver):
    return driver.execute_script("const c = {}; document.querySelectorAll('#summary dd')"
                                 ".forEach(d => c[d.dataset.count] = d.textContent); return c;")


def downloaded(folder, timeout=15):
    """The export's lines, once Chromium has finished writing the file."""
    path = folder / EXPORT_NAME
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and not list(folder.glob("*.crdownload")):
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        time.sleep(0.1)
    raise AssertionError(f"no {EXPORT_NAME} in {folder} after {timeout} s: {[p.name for p in folder.iterdir()]}")


def test_reviewer_decides_by_key_and_exports_training_examples(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, tmp_path, clinic_records())
    assert summary(browser)["documents"] == "6"
    assert summary(browser)["flagged for review"] == "4"  # three spans and the text-to-text rewrite
    press(browser, "j")
    assert focused(browser) == [0, 1]  # 阿司匹林, the first span needing review
    detail = browser.find_element("id", "detail")
    assert detail.is_displayed() and "氯吡格雷" in detail.text and "31.0%" in detail.text and "□□□□" in detail.text
    press(browser, "2")  # alternative 2: 布洛芬片
    press(browser, "j")
    assert focused(browser) == [2, 1]  # 血清铁蛋白, sentinel input, flagged
    press(browser, "e")
    box = browser.switch_to.active_element
    assert box.tag_name == "textarea" and box.get_attribute("value") == "血清铁蛋白"
    press(browser, "骨髓铁染色", Keys.ENTER)  # the model's text is selected: typing replaces it
    assert focused(browser) == [2, 1]
    press(browser, Keys.TAB)  # the next span of the document, 硫酸亚铁: not flagged, accepted all the same
    assert focused(browser) == [2, 2]
    press(browser, Keys.ENTER)
    press(browser, "j")
    assert focused(browser) == [3, 0]  # left marked: nothing to accept
    press(browser, Keys.ENTER)
    assert summary(browser)["decided"] == "2 of 5 needing review" and summary(browser)["decisions in all"] == "3"
    assert browser.find_element("css selector", '.span[data-doc="2"][data-span="1"]').text.startswith("骨髓铁染色")
    press(browser, "x")

    first, second = downloaded(browser.downloads)
    assert first == {"id": "adm-001", "inputs": "患者男，58岁，因“□□3天”入院，体温最高39.2℃。予<extra_id_0>100㎎口服，每日一次。",
                     "targets": build_targets(["布洛芬片"]),
                     "decisions": [{"span": 1, "text": "布洛芬片", "source": "alternative", "model_text": "阿司匹林",
                                    "confidence": 0.31}]}
    # Undecided sentinel Ⅲ (length 1) becomes one □; the decided spans are numbered from 0.
    assert first["targets"] == "<extra_id_0>布洛芬片<extra_id_1>"
    assert second == {"id": "adm-003", "inputs": "慢性心力衰竭，NYHA心功能□级。本例经<extra_id_0>证实，予<extra_id_1>口服。",
                      "targets": "<extra_id_0>骨髓铁染色<extra_id_1>硫酸亚铁<extra_id_2>",
                      "decisions": [{"span": 1, "text": "骨髓铁染色", "source": "typed", "model_text": "血清铁蛋白",
                                     "confidence": 0.05893},
                                    {"span": 2, "text": "硫酸亚铁", "source": "accepted", "model_text": "硫酸亚铁",
                                     "confidence": 0.741}]}


def test_filter_shows_only_documents_needing_review(browser, tmp_path):
    open_page(browser, tmp_path, clinic_records())

    def shown():
        return [e.find_element("tag name", "h2").text.split()[0] for e in browser.find_elements("css selector", "article.doc")]

    assert shown() == ["adm-001", "adm-002", "adm-003", "adm-004", "5", "adm-006"]
    press(browser, "f")
    assert shown() == ["adm-001", "adm-003", "adm-004", "adm-006"]
    assert browser.find_element("id", "filter").is_selected()
    browser.find_element("id", "filter").click()
    assert len(shown()) == 6


def test_five_thousand_documents_render_one_page_and_review_keys_cross_pages(browser, tmp_path):
    open_page(browser, tmp_path, large_records())
    assert summary(browser)["documents"] == "5,000"
    assert len(browser.find_elements("css selector", "article.doc")) == 50  # only a page's worth in the DOM
    press(browser, "j")  # the first span needing review is on page 3
    assert focused(browser) == [119, 1]
    assert "Page 3 of 100" in browser.find_element("id", "page-label").text
    assert len(browser.find_elements("css selector", "article.doc")) == 50
    press(browser, "k")  # nothing before it: stays
    assert focused(browser) == [119, 1]
    press(browser, "j", "j", "j", "j", "j", "j", "j", "j")  # every 7th document from 119 on: 175 is on page 4
    assert focused(browser) == [175, 1]
    assert "Page 4 of 100" in browser.find_element("id", "page-label").text


def test_text_in_records_cannot_inject_markup(browser, tmp_path):
    hostile = "</script><script>window.injected = 1</script><b>粗体</b>"
    record = restored_record([hostile + "予", {"marker": "□□", "text": "<i>阿司</i>", "confidence": 0.2, "review": True,
                                               "reason": "<img src=x onerror='window.injected = 1'>",
                                               "alternatives": [("<b>x</b>", 0.1)]}, "。"], hostile)
    open_page(browser, tmp_path, [record, *clinic_records()])
    assert browser.execute_script("return window.injected") is None
    press(browser, "j")  # shows the detail panel: reason and alternatives as text too
    assert browser.execute_script("return document.querySelectorAll('main b, main i, main script, #detail b, #detail img').length") == 0
    article = browser.find_element("css selector", "article.doc").text
    assert hostile in article and "<i>阿司</i>" in article
    assert "<img src=x" in browser.find_element("id", "detail").text
    assert len(browser.find_elements("css selector", "article.doc")) == 7


def test_decisions_survive_a_reload_and_undo(browser, tmp_path):
    records = clinic_records()
    open_page(browser, tmp_path, records)
    press(browser, "j", "1")
    assert summary(browser)["decisions in all"] == "1"
    browser.refresh()
    assert summary(browser)["decisions in all"] == "1"
    assert "氯吡格雷" in browser.find_element("css selector", '.span[data-doc="0"][data-span="1"]').text
    press(browser, "j", "u")
    browser.refresh()
    assert summary(browser)["decisions in all"] == "0"


# ---- The README's screenshot ----

def write_screenshot(path):
    """docs/review-page.png: the clinic records, the first span needing review focused with its
    alternatives shown."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        driver = start_chromium(folder / "profile", folder, size=(1100, 1000))
        try:
            open_page(driver, folder, clinic_records())
            press(driver, "j")
            time.sleep(4)  # the status message fades
            driver.save_screenshot(str(path))
        finally:
            driver.quit()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/review-page.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_screenshot(target)
    print(f"wrote {target}")


def test_restore_py_review_page_export_goes_straight_back_into_training(browser, finished_run, small_data, tmp_path,
                                                                        hf_home):
    """The loop the README shows: restore.py --html, a decision in the page, the export as TRAIN_FILE."""
    from conftest import run_train_process
    from test_restore import LINE, records_of, restore

    (tmp_path / "damaged.txt").write_text(LINE + "\n\n予阿□□□□治疗。\n", encoding="utf-8")
    result = restore(hf_home, "--model", finished_run[0] / "best", "--input", tmp_path / "damaged.txt",
                     "--output", tmp_path / "restored.jsonl", "--html", tmp_path / "review.html", "--review-below", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    first = records_of(tmp_path / "restored.jsonl")[0]
    browser.get((tmp_path / "review.html").as_uri())
    assert summary(browser)["documents"] == "3"
    press(browser, "j")
    assert focused(browser) == [0, 0]
    press(browser, "a", "x")  # accept the first span, export
    [line] = downloaded(browser.downloads)
    span = first["spans"][0]
    assert line["inputs"] == LINE[:span["input_start"]] + "<extra_id_0>" + LINE[span["input_end"]:]
    assert line["targets"] == build_targets([span["text"]])
    checked = run_train_process(["--demo", "--check", f"--TRAIN_FILE={browser.downloads / EXPORT_NAME}",
                                 f"--VALID_FILE={small_data[1]}", f"--OUTPUT_DIR={tmp_path / 'run'}"], hf_home)
    assert checked.returncode == 0 and "train      1 examples" in checked.stdout, checked.stdout[-2000:]


def test_a_restoration_with_characters_the_model_could_not_write_is_never_accepted_as_it_is(browser, tmp_path):
    """restore.py shows a character missing from the vocabulary as □: accepting that would put □ in
    the training data. The reviewer has to type the word."""
    from selenium.webdriver.common.keys import Keys

    open_page(browser, tmp_path, [restored_record(["予", {"marker": "□□□", "text": "□□素", "confidence": 0.2,
                                                          "review": True, "reason": "the model's vocabulary cannot "
                                                          "write some of its characters",
                                                          "alternatives": [("□霉素", 0.1)]}, "口服。"], "unk-1")])
    press(browser, "j")
    assert focused(browser) == [0, 0]
    press(browser, "a")
    press(browser, "1")
    press(browser, "e", "□□素", Keys.ENTER)
    assert "could not write" in browser.find_element("id", "status").text or "□" in browser.find_element(
        "id", "status").text
    assert summary(browser)["decisions in all"] == "0"
    press(browser, Keys.ESCAPE, "e", "鱻龘素", Keys.ENTER)
    assert summary(browser)["decisions in all"] == "1"


def test_a_document_with_more_decisions_than_sentinels_is_exported_as_several_examples(browser, tmp_path):
    """T5 has 100 sentinels, so one example holds at most 99 spans: 120 decisions in one long note
    come out as two examples, cut at a sentence end, each numbered from <extra_id_0>."""
    pieces = []
    for number in range(120):
        pieces += [f"第{number}次查房：予", {"marker": "□□", "text": "补液", "confidence": 0.4, "review": True},
                   "。"]
    record = restored_record(pieces, "long-1")
    open_page(browser, tmp_path, [record])
    press(browser, *(["j", "a"] * 120), "x")
    first, second = downloaded(browser.downloads)
    assert [len(part["decisions"]) for part in (first, second)] == [99, 21]
    assert (first["part"], second["part"]) == (1, 2)
    for part in (first, second):
        assert part["targets"] == build_targets(["补液"] * len(part["decisions"]))
        assert part["inputs"].count("<extra_id_") == len(part["decisions"])
    assert first["inputs"].endswith("。") and second["inputs"].startswith("第99次查房")
    whole = (first["inputs"] + second["inputs"]).replace("<extra_id_", "").split(">")
    assert "".join(piece.rstrip("0123456789") for piece in whole) == record["inputs"].replace("□□", "")


def test_a_span_more_likely_wrong_than_right_needs_review_even_unflagged(browser, tmp_path):
    """restore.py flags only below --review-below, which has no default: the page still sends the
    reviewer to every span under 50%, and says when a typed word does not fit the lost length."""
    from selenium.webdriver.common.keys import Keys

    open_page(browser, tmp_path, [restored_record(["体温38.5℃，予", {"marker": "□□□", "text": "布洛芬", "confidence": 0.97},
                                                   "口服，诊断为", {"marker": "□□□□□", "text": "Ⅱ型糖尿病",
                                                                  "confidence": 0.3}, "。"], "low-1"),
                                  restored_record(["无缺损的一行。"], "none-2")])
    press(browser, "j")
    assert focused(browser) == [0, 1]
    press(browser, "e", "糖尿病", Keys.ENTER)  # the model's text is selected: typing replaces it
    assert "3 characters where 5 were lost" in browser.find_element("id", "status").text
    assert "no gaps" in browser.find_element("css selector", 'article:nth-of-type(2) .meta').text
