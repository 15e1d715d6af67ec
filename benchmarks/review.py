"""The review page (domainfocus/review.py) at 500 and 5,000 documents: file size, and in headless
Chromium the time from navigation to the first page of documents on screen, to the load event, and
for one page turn. Skipped, with a message, where Chromium or selenium is missing."""

import os
import random
import statistics
import tempfile

from benchmarks.common import print_table

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SIZES = (500, 5000)
LOADS = 3  # page loads per size; the median is reported

# Clinical sentences with a lost span each: (before, restoration, after). Discharge summaries repeat
# their template sentences, so these recur as they would in a real batch.
SENTENCES = [("患者神志清，精神可，体温", "36.8", "℃，饮食睡眠可。"),
             ("予", "头孢曲松", "2g静滴，每日一次。"),
             ("诊断：2型糖尿病，予", "二甲双胍", "500㎎口服，每日两次。"),
             ("NYHA心功能", "Ⅱ", "级，予呋塞米20㎎口服。"),
             ("复查", "血常规", "未见明显异常。"),
             ("本例经", "血清铁蛋白", "证实，予硫酸亚铁口服。"),
             ("切口", "Ⅱ/甲", "愈合，拆线出院。")]
ALTERNATIVES = ["阿司匹林", "氯吡格雷", "尿常规", "肝功能", "Ⅲ", "37.2", "HbA1c"]


def synthetic_records(count, seed=0):
    """`count` restore.py records of 3 to 8 sentences; about 1 span in 12 flagged, 1 in 100 left marked."""
    rng = random.Random(seed)
    return [synthetic_record(rng, f"doc-{number + 1}") for number in range(count)]


def synthetic_record(rng, doc_id):
    inputs = restored = ""
    spans = []
    for before, text, after in rng.choices(SENTENCES, k=rng.randint(3, 8)):
        confidence = round(rng.betavariate(5, 1), 4)
        left_marked = rng.random() < 0.01
        review = not left_marked and (confidence < 0.5 or rng.random() < 0.05)  # as restore.py --review-below 0.5, plus lexicon reasons
        marker, shown = "□" * len(text), ("□" * len(text) if left_marked else text)
        inputs, restored = inputs + before, restored + before
        start = len(restored) + review
        span = {"text": "" if left_marked else text, "confidence": None if left_marked else confidence, "review": review}
        if review:
            span["reason"] = "confidence below 0.5"
        span["alternatives"] = [] if left_marked else [
            {"text": other, "confidence": round(rng.random() * (1 - confidence), 4)} for other in rng.sample(ALTERNATIVES, 3)]
        span.update(length=len(text), input_start=len(inputs), input_end=len(inputs) + len(marker),
                    start=start, end=start + len(shown))
        spans.append(span)
        inputs += marker + after
        restored += (f"⟦{shown}⟧" if review else shown) + after
    return {"id": doc_id, "inputs": inputs, "restored": restored, "spans": spans}


def chromium_missing():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    return f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)" if missing else None


def start_chromium(profile, downloads=None, size=(1280, 900)):
    """Headless Chromium from the Debian packages, so that Selenium Manager never goes to the network;
    with `downloads`, files the page offers are saved there without asking (the review tests use it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    if downloads is not None:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


# Milliseconds from navigation start, as the page saw them.
TIMINGS = """
const navigation = performance.getEntriesByType("navigation")[0];
const mark = name => performance.getEntriesByName(name)[0].startTime;
const before = performance.now();
document.getElementById("next-page").click();
const turn = performance.now() - before;
return {parsed: mark("review:data-parsed"), first: mark("review:first-page"), load: navigation.loadEventEnd,
        turn: turn, documents: document.querySelectorAll("article.doc").length};
"""


def measure(driver, page):
    """The median of LOADS loads of `page`: data parsed, first page rendered, load event, page turn (ms)."""
    runs = []
    for _ in range(LOADS):
        driver.get(f"file://{page}")
        runs.append(driver.execute_script(TIMINGS))
    assert all(run["documents"] == 50 for run in runs), runs  # a page of documents, never all of them
    return {name: statistics.median(run[name] for run in runs) for name in ("parsed", "first", "load", "turn")}


def bench_review(options, folder):
    """The review page's size and load time at 500 and 5,000 documents."""
    from domainfocus.review import write_review_page

    print()
    reason = chromium_missing()
    if reason:
        print(f"review page: skipped, {reason}.")
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=folder) as work:
        driver = start_chromium(os.path.join(work, "profile"))
        try:
            for count in SIZES:
                page = os.path.join(work, f"review-{count}.html")
                records = synthetic_records(count)
                write_review_page(page, records)
                times = measure(driver, page)
                spans = sum(len(record["spans"]) for record in records)
                rows.append((f"{count:,}", f"{spans:,}", f"{os.path.getsize(page) / 1e6:.2f} MB",
                             f"{times['parsed']:.0f} ms", f"{times['first']:.0f} ms", f"{times['load']:.0f} ms",
                             f"{times['turn']:.1f} ms"))
        finally:
            driver.quit()
    print(f"Review page in headless Chromium (median of {LOADS} loads, times from navigation start):\n")
    print_table(["documents", "spans", "file size", "data parsed", "first documents rendered", "load event",
                 "page turn (50 documents)"], rows)


if __name__ == "__main__":  # python -m benchmarks.review: this section alone, without bench.py's imports of torch
    bench_review(None, tempfile.gettempdir())
