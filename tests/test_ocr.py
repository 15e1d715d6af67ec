"""OCR in and out (domainfocus/ocr.py): which characters count as lost, what is kept, what write()
puts back and where, schema-valid ALTO, and the real Tesseract output of the stained fixture page."""

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from domainfocus.damage import Span
from domainfocus.ocr import DEFAULT_THRESHOLD, OcrError, is_ocr_file, read_ocr

ROOT = Path(__file__).resolve().parent.parent
OCR = ROOT / "tests" / "fixtures" / "ocr"
SCHEMAS = ROOT / "tests" / "fixtures" / "alto"
V2, V3, V4 = (f"http://www.loc.gov/standards/alto/ns-v{n}#" for n in (2, 3, 4))
XHTML = "{http://www.w3.org/1999/xhtml}"


def alto(namespace, lines, block_id="TB1"):
    """A small ALTO file: `lines` are lists of String/SP/HYP element texts."""
    text_lines = "".join(f'<TextLine ID="L{number}" HPOS="0" VPOS="{number * 50}" WIDTH="900" HEIGHT="40">'
                         f'{"".join(items)}</TextLine>' for number, items in enumerate(lines))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<alto xmlns="{namespace}" xmlns:xlink="http://www.w3.org/1999/xlink">'
            f'<Description><MeasurementUnit>pixel</MeasurementUnit></Description>'
            f'<Layout><Page ID="P1" HEIGHT="1000" WIDTH="1000" PHYSICAL_IMG_NR="1"><PrintSpace HPOS="0" VPOS="0" WIDTH="1000" HEIGHT="1000">'
            f'<TextBlock ID="{block_id}" HPOS="0" VPOS="0" WIDTH="900" HEIGHT="400">{text_lines}</TextBlock>'
            f'</PrintSpace></Page></Layout></alto>\n')


def string(content, x, extra="", glyphs=""):
    body = f">{glyphs}</String>" if glyphs else "/>"
    return f'<String ID="S{x}" CONTENT="{content}" HPOS="{x}" VPOS="5" WIDTH="40" HEIGHT="30" {extra}{body}'


def glyph(content, x, gc):
    return f'<Glyph ID="G{x}" CONTENT="{content}" HPOS="{x}" VPOS="5" WIDTH="10" HEIGHT="30" GC="{gc}"/>'


SP = '<SP WIDTH="10" HPOS="0" VPOS="5"/>'


def written(tmp_path, text, name="in.xml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def span(text, confidence=0.87, alternatives=()):
    return {"text": text, "confidence": confidence, "review": False,
            "alternatives": [{"text": other, "confidence": score} for other, score in alternatives]}


UNRESTORED = {"text": "", "confidence": None, "review": False, "alternatives": []}


def results_for(page, *spans_per_document):
    return [{"inputs": document.text, "restored": "", "spans": list(spans)}
            for document, spans in zip(page.documents, spans_per_document)]


def schema_for(path):
    """The bundled XSD of the ALTO version `path` declares, its xlink import served locally."""
    from lxml import etree

    class Local(etree.Resolver):
        def resolve(self, url, public_id, context):
            if url.endswith("xlink.xsd"):
                return self.resolve_filename(str(SCHEMAS / "xlink.xsd"), context)
            return None

    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(Local())
    namespace = etree.parse(path).getroot().nsmap[None]
    name = {V2: "alto-2-1.xsd", V3: "alto-3-0.xsd", V4: "alto-4-4.xsd"}[namespace]
    return etree.XMLSchema(etree.parse(str(SCHEMAS / name), parser))


def assert_valid(path):
    schema = schema_for(path)
    from lxml import etree

    assert schema.validate(etree.parse(path)), schema.error_log


def alto_strings(path):
    return [element for element in ET.parse(path).getroot().iter() if element.tag.endswith("}String")]


def test_glyphs_below_threshold_become_one_lost_character_each(tmp_path):
    glyphs = glyph("高", 0, 0.95) + glyph("血", 10, 0.2) + glyph("压", 20, 0.3)
    path = written(tmp_path, alto(V4, [[string("高血压", 0, 'WC="0.9"', glyphs), SP, string("病", 50, 'WC="0.99"')]]))
    page = read_ocr(path, 0.5)
    assert page.documents[0].text == "高□□病"
    assert page.documents[0].parts == ["高", Span("□□", 2, "□"), "病"]
    assert read_ocr(path, 0.25).documents[0].text == "高□压病"  # 0.3 is not below 0.25
    assert read_ocr(path, 0.0).documents[0].text == "高血压病"
    # A word below threshold loses every character, however sure its glyphs: Tesseract's glyph
    # confidences are too high to trust alone (benchmarks/ocr.py).
    assert read_ocr(path, 0.95).documents[0].text == "□□□病"


def test_alto_cc_counts_zero_as_sure(tmp_path):
    """ALTO v2/v3 CC: one digit per character, 0 most confident and 9 least."""
    path = written(tmp_path, alto(V2, [[string("fever", 0, 'CC="0 9 0 0 8"'), SP, string("high", 60, 'CC="0000"')]]))
    assert read_ocr(path, 0.5).documents[0].text == "f□ve□ high"


def test_a_restored_word_before_a_line_end_hyphen_and_cc_without_separators_are_written_right(tmp_path):
    """The HYP stays its own element (never doubled into CONTENT); CC digits written together are
    read and rewritten as such, kept characters keeping theirs."""
    path = written(tmp_path, alto(V2, [[string("pati", 0, 'WC="0.2" CC="9999"'), '<HYP CONTENT="-"/>'],
                                       [string("fxyr", 100, 'WC="0.95" CC="0970"')]]))
    page = read_ocr(path, 0.6)
    assert page.documents[0].text == "□□□□-\nf□□r"
    out = str(tmp_path / "out.xml")
    page.write(results_for(page, [span("cure"), span("ev", 0.9)]), out)
    strings = alto_strings(out)
    assert [(s.get("CONTENT"), s.get("CC")) for s in strings] == [("cure", "1 1 1 1"), ("fevr", "0 1 1 0")]
    assert sum(1 for e in ET.parse(out).getroot().iter() if e.tag.endswith("}HYP")) == 1
    assert_valid(out)


def test_word_confidence_and_unreadable_characters(tmp_path):
    path = written(tmp_path, alto(V3, [[string("chest", 0, 'WC="0.3"'), SP, string("pain", 60, 'WC="0.95"'), SP,
                                        string("x\ufffdz", 120, 'WC="0.99"'), SP,
                                        string("", 180, 'WC="0.99"'), SP, string("now", 240)]]))
    page = read_ocr(path, 0.5)
    assert page.documents[0].text == "□□□□□ pain x□z □ now"
    assert [part.length for part in page.documents[0].spans] == [5, 1, 1]


def test_kept_text_is_exact_and_chinese_is_not_spaced(tmp_path):
    """Tesseract's chi_sim puts an SP between every String; no space where a Chinese character is on
    either side, Latin words keep theirs, lines are joined by a line break, a line-end hyphen stays."""
    path = written(tmp_path, alto(V3, [
        [string("患者", 0, 'WC="0.9"'), SP, string("体温", 50, 'WC="0.9"'), SP, string("38.5℃", 100, 'WC="0.9"'),
         SP, string("，", 150, 'WC="0.9"')],
        [string("Ⅱ", 0, 'WC="0.9"'), SP, string("型", 50, 'WC="0.9"'), SP, string("chest", 90, 'WC="0.9"'), SP,
         string("x-ray", 150, 'WC="0.9"'), SP, string("hyper", 200, 'WC="0.9"'),
         '<HYP CONTENT="-" HPOS="240" VPOS="5" WIDTH="5"/>'],
        [string("tension", 0, 'WC="0.9"'), string("&amp;&lt;&quot;", 60, 'WC="0.9"')]]))
    document = read_ocr(path, 0.5).documents[0]
    assert document.text == '患者体温38.5℃，\nⅡ型chest x-ray hyper-\ntension&<"'
    assert document.parts == [document.text]


def test_a_run_of_lost_words_is_one_span_with_its_spaces(tmp_path):
    path = written(tmp_path, alto(V3, [[string("no", 0, 'WC="0.9"'), SP, string("ab", 40, 'WC="0.1"'), SP,
                                        string("cde", 80, 'WC="0.1"'), SP, string("seen", 120, 'WC="0.9"')]]))
    document = read_ocr(path, 0.5).documents[0]
    assert document.parts == ["no ", Span("□□ □□□", 5, "□"), " seen"]
    assert "".join(part if isinstance(part, str) else part.marker for part in document.parts) == document.text


def test_write_puts_characters_on_their_glyphs_with_confidence_and_alternatives(tmp_path):
    glyphs = glyph("高", 0, 0.95) + glyph("面", 10, 0.2) + glyph("庄", 20, 0.3)
    source = alto(V4, [[string("高面庄", 0, 'WC="0.6"', glyphs), SP, string("病", 50, 'WC="0.99"')]])
    path = written(tmp_path, source)
    page = read_ocr(path, 0.5)
    out = str(tmp_path / "out.xml")
    page.write(results_for(page, [span("血压", 0.87, [("血氧", 0.05)])]), out)
    first, second = alto_strings(out)
    assert first.get("CONTENT") == "高血压" and first.get("WC") == "0.87"
    glyph_elements = [child for child in first if child.tag.endswith("}Glyph")]
    assert [(g.get("CONTENT"), g.get("GC")) for g in glyph_elements] == [("高", "0.95"), ("血", "0.87"), ("压", "0.87")]
    alternatives = {a.get("PURPOSE"): a.text for a in first if a.tag.endswith("}ALTERNATIVE")}
    assert alternatives == {"domainfocus:ocr": "高面庄", "domainfocus:alternative confidence=0.05": "高血氧"}
    # Untouched: the other word, every coordinate and ID.
    assert (second.get("CONTENT"), second.get("WC")) == ("病", "0.99") and not list(second)
    before = [(e.tag, {k: v for k, v in e.attrib.items() if k not in ("CONTENT", "WC", "GC")})
              for e in ET.parse(path).getroot().iter()]
    after = [(e.tag, {k: v for k, v in e.attrib.items() if k not in ("CONTENT", "WC", "GC", "PURPOSE")})
             for e in ET.parse(out).getroot().iter() if not e.tag.endswith("ALTERNATIVE")]
    assert before == after
    assert_valid(out)
    assert read_ocr(out, 0.5).documents[0].text == "高血压病"


def test_restoration_across_words_and_spaces_lands_in_order(tmp_path):
    path = written(tmp_path, alto(V3, [[string("no", 0, 'WC="0.9"'), SP, string("xy", 40, 'WC="0.1"'), SP,
                                        string("zzz", 80, 'WC="0.1"')]]))
    page = read_ocr(path, 0.5)
    out = str(tmp_path / "out.xml")
    page.write(results_for(page, [span("ca rdi")]), out)  # whitespace in the restoration is not counted
    assert [s.get("CONTENT") for s in alto_strings(out)] == ["no", "ca", "rdi"]
    assert_valid(out)


def test_unrestored_spans_keep_what_ocr_read(tmp_path):
    path = written(tmp_path, alto(V3, [[string("ab", 0, 'WC="0.1"'), SP, string("ok", 40, 'WC="0.9"'), SP,
                                        string("cd", 80, 'WC="0.2"')]]))
    page = read_ocr(path, 0.5)
    out = str(tmp_path / "out.xml")
    page.write(results_for(page, [UNRESTORED, span("□x", 0.6)]), out)
    first, _, third = alto_strings(out)
    assert (first.get("CONTENT"), first.get("WC"), list(first)) == ("ab", "0.1", [])
    # A marker in the restored text is a character the model could not write: the glyph keeps its reading.
    assert third.get("CONTENT") == "cx" and third.get("WC") == "0.6"


def test_a_restoration_of_another_length_goes_whole_on_the_first_glyph(tmp_path):
    path = written(tmp_path, alto(V2, [[string("t1", 0, 'CC="0 9"'), SP, string("C", 40, 'CC="9"')]]))
    page = read_ocr(path, 0.5)
    assert page.documents[0].spans[0].length == 2  # "1 C": two lost glyphs
    out = str(tmp_path / "out.xml")
    page.write(results_for(page, [span("38℃")]), out)  # three characters for two glyphs
    assert [(s.get("CONTENT"), s.get("CC")) for s in alto_strings(out)] == [("t38℃", "0 1 1 1"), ("", "")]
    assert_valid(out)


def test_hocr_round_trip(tmp_path):
    page = read_ocr(str(OCR / "page.hocr"), DEFAULT_THRESHOLD)
    spans = [[span("□" * s.length if s.length > 3 else "甲" * s.length, 0.75, [("乙" * s.length, 0.1)])
              for s in document.spans] for document in page.documents]
    out = str(tmp_path / "out.hocr")
    page.write(results_for(page, *spans), out)
    text = Path(out).read_text(encoding="utf-8")
    assert text.startswith(Path(OCR / "page.hocr").read_text(encoding="utf-8").split("<html")[0])  # DOCTYPE kept
    assert "<title></title>" in text and "html:" not in text
    words = [w for w in ET.parse(out).getroot().iter(XHTML + "span") if w.get("class") == "ocrx_word"]
    restored = [w for w in words if any(c.get("class") == "alternatives" for c in w)]
    # A word is as sure as its least sure part: the span (0.75) or a character kept as the engine read it.
    shown = [int(re.search(r"x_wconf (\d+)", w.get("title")).group(1)) for w in restored]
    assert restored and max(shown) == 75 and min(shown) < 75
    choice = next(c for c in restored[0] if c.get("class") == "alternatives")
    assert (choice[0].tag, choice[0].get("class")) == (XHTML + "ins", "alt")
    assert any(c.tag == XHTML + "del" and c.text and "乙" in c.text for c in choice)
    read = {w.get("id"): "".join("".join(w.itertext()).split()) for w in ET.parse(OCR / "page.hocr").getroot().iter()
            if w.get("class") == "ocrx_word"}
    assert all(any(c.tag == XHTML + "del" and c.text == read[w.get("id")] for c in w.iter()) for w in restored)
    assert read_ocr(out, 0.5).documents[0].text.count("甲") >= 1


def test_real_tesseract_alto(tmp_path):
    """Tesseract 5.3's ALTO v3 of the stained page: stained words are lost, the rest is its reading."""
    truth = json.loads((OCR / "page.truth.json").read_text(encoding="utf-8"))
    page = read_ocr(str(OCR / "page.alto.xml"), DEFAULT_THRESHOLD)
    assert page.kind == "alto" and page.version == "3" and len(page.documents) == len(truth["sentences"])
    assert page.documents[0].text == "患者男，65岁，体温38.5人□□□予布洛芬10□□。"
    assert page.documents[5].text.startswith("Patient □□□□□□□□□□□□ pain for 3 days;")
    lost = sum(part.length for document in page.documents for part in document.spans)
    assert 30 <= lost <= 70  # 51 with Tesseract 5.3.0 (23 stained characters; whole words go)
    out = str(tmp_path / "page.alto.xml")
    page.write(results_for(page, *[[span("字" * s.length) for s in d.spans] for d in page.documents]), out)
    assert_valid(out)
    assert "□" not in "".join(d.text for d in read_ocr(out, 0.5).documents)


def test_real_glyph_alto_v4_validates(tmp_path):
    page = read_ocr(str(OCR / "page.v4.alto.xml"), 0.9)
    assert page.version == "4" and page.documents[1].spans
    out = str(tmp_path / "page.xml")
    page.write(results_for(page, *[[span("字" * s.length) for s in d.spans] for d in page.documents]), out)
    assert_valid(out)


@pytest.mark.parametrize("content, expected", [
    ("<alto><Layout>", "not well-formed XML"),
    (alto(V4, [[]]), "no text (no String)"),
    ("<PcGts xmlns='x'/>", "neither ALTO"),
    ("<html><body><p>hello</p></body></html>", "neither ALTO"),
])
def test_bad_files_say_what_is_wrong_in_one_line(tmp_path, content, expected):
    with pytest.raises(OcrError) as error:
        read_ocr(written(tmp_path, content), 0.5)
    assert expected in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(OcrError, match="no such file"):
        read_ocr(str(tmp_path / "missing.xml"), 0.5)


def test_is_ocr_file(tmp_path):
    assert is_ocr_file(str(OCR / "page.alto.xml")) == "alto"
    assert is_ocr_file(str(OCR / "page.hocr")) == "hocr"
    assert is_ocr_file(written(tmp_path, Path(OCR / "page.hocr").read_text(encoding="utf-8"), "x.xml")) == "hocr"
    assert is_ocr_file(written(tmp_path, "<alto><broken", "y.xml")) == "alto"
    assert is_ocr_file(written(tmp_path, "<config/>", "z.xml")) is None
    assert is_ocr_file(written(tmp_path, "text", "notes.txt")) is None


def test_write_is_atomic(tmp_path):
    path = written(tmp_path, alto(V3, [[string("ab", 0, 'WC="0.1"')]]))
    page = read_ocr(path, 0.5)
    out = tmp_path / "out.xml"
    out.write_text("old", encoding="utf-8")
    with pytest.raises(KeyError):
        page.write([{"spans": [{"confidence": 0.5}]}], str(out))  # a broken result: nothing written
    assert out.read_text(encoding="utf-8") == "old"
    page.write(results_for(page, [span("cd")]), str(out))
    assert sorted(os.listdir(tmp_path)) == ["in.xml", "out.xml"]


def test_restore_py_takes_ocr_output_and_gives_it_back_restored_with_a_review_page(finished_run, tmp_path, hf_home):
    """The path the README shows: Tesseract's ALTO / hOCR in, the same format back with every lost
    span restored (or kept as read when not), the rest of the page as it was, and the review page."""
    from test_restore import records_of, restore

    model = finished_run[0] / "best"
    for name, suffix in (("page.v4.alto.xml", ".xml"), ("page.hocr", ".hocr")):
        source = read_ocr(str(OCR / name), DEFAULT_THRESHOLD)
        result = restore(hf_home, "--model", model, "--input", OCR / name, "--output", tmp_path / f"out{suffix}",
                         "--html", tmp_path / "review.html")
        assert result.returncode == 0, result.stderr[-3000:]
        scored = restore(hf_home, "--model", model, "--input", OCR / name, "--output", tmp_path / "out.jsonl")
        records = records_of(tmp_path / "out.jsonl")
        assert [record["id"] for record in records] == source.ids
        assert [len(record["spans"]) for record in records] == [len(document.spans) for document in source.documents]
        back = read_ocr(str(tmp_path / f"out{suffix}"), 0.0)  # every character as the file now reads
        assert back.kind == source.kind and back.ids == source.ids
        for document, again, record in zip(source.documents, back.documents, records):
            # The text the engine read with confidence comes back unchanged and in order, the restorations
            # between; spaces aside, which the format keeps between words and a CJK neighbour drops in reading.
            text, position = "".join(again.text.split()), 0
            for part in document.parts:
                if isinstance(part, str) and part.strip():
                    position = text.index("".join(part.split()), position) + len("".join(part.split()))
            restored = ["".join(span["text"].split()) for span in record["spans"] if span["confidence"] is not None]
            assert restored and all(piece in text for piece in restored)
        if source.kind == "alto":
            assert_valid(str(tmp_path / f"out{suffix}"))
        assert scored.returncode == 0
        page = (tmp_path / "review.html").read_text(encoding="utf-8")
        assert all(f'"id":"{name}"' in page for name in source.ids)  # every block is on the review page
    (tmp_path / "broken.xml").write_text("<alto xmlns='http://www.loc.gov/standards/alto/ns-v4#'><Layout>",
                                         encoding="utf-8")
    (tmp_path / "empty.xml").write_text(alto(V4, [[]]), encoding="utf-8")
    for path, message in ((tmp_path / "broken.xml", "not well-formed XML"), (tmp_path / "empty.xml", "no text")):
        result = restore(hf_home, "--model", model, "--input", path, "--output", tmp_path / "o.jsonl")
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
