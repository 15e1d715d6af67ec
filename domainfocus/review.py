"""A review page for restorations: one self-contained HTML file a clinician works through.

    from domainfocus.review import write_review_page
    write_review_page("review.html", results)      # restore.py's records, one per document

or from the command line:  python -m domainfocus.review restored.jsonl review.html

The page (template: review_page.html beside this file) needs no network and no server: opened from
disk it shows every document's restored text with each span marked by confidence band, lets the
reviewer accept a restoration, choose an alternative or type a correction, keeps the decisions in
the browser (localStorage, keyed by a hash of the data), and exports them as JSON Lines in T5
sentinel format, ready to train on. Only this module writes the page; the page does the rest.
"""

import argparse
import hashlib
import html
import importlib.resources
import json
import re
import sys

from domainfocus.checkpoints import write_file_atomically

TEMPLATE = "review_page.html"
PLACEHOLDER = re.compile(r"\{\{(TITLE|KEY|LANG|DATA)\}\}")
SPAN_FIELDS = ("text", "confidence", "review", "reason", "alternatives", "length",
               "input_start", "input_end", "start", "end")
CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")  # ideographs: the texts are then shown as Chinese


class ReviewError(ValueError):
    """A record the page cannot show: says which document and which span."""


def write_review_page(path, records, title="DomainFocus review"):
    """Write the review page for `records` (restore.py's results) to `path`, atomically: a reader
    never sees half a page, and an interrupted write leaves the old page in place."""
    records = [page_record(record, number) for number, record in enumerate(records, start=1)]
    data = embedded_json(records)
    values = {"TITLE": html.escape(title), "KEY": hashlib.sha256(data.encode("utf-8")).hexdigest()[:16],
              "LANG": text_language(records), "DATA": data}
    template = importlib.resources.files("domainfocus").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # One pass over the template: a value that happens to contain "{{DATA}}" is never expanded.
    write_file_atomically(path, PLACEHOLDER.sub(lambda match: values[match.group(1)], template))


def page_record(record, number):
    """The fields of one record the page uses, checked: offsets that do not fit the texts would
    highlight the wrong characters and export wrong training examples."""
    name = f"document {number}" + (f" (id {record['id']!r})" if record.get("id") is not None else "")
    for field in ("inputs", "restored"):
        if not isinstance(record.get(field), str):
            raise ReviewError(f"{name} has no {field!r} text.")
    spans = []
    restored_end = input_end = 0
    for index, span in enumerate(record.get("spans") or []):
        missing = [field for field in ("input_start", "input_end", "start", "end") if not isinstance(span.get(field), int)]
        if missing:
            raise ReviewError(f"{name}, span {index}: no {', '.join(missing)}; restore it again with a restore.py "
                              "that writes span offsets.")
        if not input_end <= span["input_start"] <= span["input_end"] <= len(record["inputs"]):
            raise ReviewError(f"{name}, span {index}: input_start/input_end outside the inputs or out of order.")
        if not restored_end <= span["start"] <= span["end"] <= len(record["restored"]):
            raise ReviewError(f"{name}, span {index}: start/end outside the restored text or out of order.")
        input_end, restored_end = span["input_end"], span["end"]
        spans.append({field: span.get(field) for field in SPAN_FIELDS if field in span}
                     | {"alternatives": span.get("alternatives") or []})
    page = {"id": record.get("id") if record.get("id") is not None else number,
            "inputs": record["inputs"], "restored": record["restored"], "spans": spans}
    if record.get("review"):
        page.update(review=True, reason=record.get("reason"))
    return page


def embedded_json(records):
    """The records as JSON that is safe inside <script>: no "<" at all (so neither "</script>" nor
    "<!--" can end or bend the script element) and no U+2028/U+2029, which older JavaScript
    engines read as line ends. "<" only ever occurs inside JSON strings, where \\u003c means it."""
    text = json.dumps(records, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def text_language(records):
    """"zh-Hans" when the texts are Chinese, so that browsers pick Simplified Chinese glyphs; else
    nothing (the browser's default). Judged on the first documents: one corpus, one language."""
    return "zh-Hans" if any(CJK.search(record["inputs"]) for record in records[:200]) else ""


def read_records(path):
    """restore.py's output: one JSON object per line (blank lines skipped)."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the review page for restore.py's output.")
    parser.add_argument("restored", help="restore.py's output (JSON Lines)")
    parser.add_argument("page", help="the HTML file to write")
    parser.add_argument("--title", default="DomainFocus review")
    options = parser.parse_args(argv)
    try:
        records = read_records(options.restored)
        write_review_page(options.page, records, options.title)
    except (OSError, json.JSONDecodeError, ReviewError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(records)} documents -> {options.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
