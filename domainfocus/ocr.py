"""OCR output in and out: ALTO XML (v2 to v4) and hOCR (as Tesseract writes it), read as Documents
whose lost spans are the characters the engine was not sure of, and written back in the same format
with the restored characters on the glyphs they replace.

    page = read_ocr("scan.xml", threshold=0.5)    # one Document per text block, in reading order
    results = restorer.restore_documents(page.documents, alternatives=3)
    page.write(results, "scan.restored.xml")

What is lost: a character whose confidence (its glyph's or its word's, the lower where the engine
gives both) is below `threshold`, and a character the engine could not read (U+FFFD, or a word with a size and
no content). Everything else is kept exactly, so a reader of the output can trust what was read.
"""

import dataclasses
import math
import os
import re
import unicodedata
import xml.etree.ElementTree as ET

from domainfocus.checkpoints import write_file_atomically
from domainfocus.damage import Document, Span
from domainfocus.lengths import UNKNOWN_SOURCE, visible

UNIT = "□"  # one lost character in a Document's text
PURPOSE = "domainfocus"  # ALTO ALTERNATIVE@PURPOSE prefix: what this tool wrote, not what the engine read
XHTML = "http://www.w3.org/1999/xhtml"
SNIFF_BYTES = 4096
# --ocr-confidence's default: on the stained fixture page (benchmarks/ocr.py) 0.6 counts 20 of 21
# stained glyphs lost and 20 of 116 clean, correctly read ones; 0.5 counts 19 and 19; 0.7, 20 and 31.
DEFAULT_THRESHOLD = 0.6


class OcrError(ValueError):
    """A problem the user can fix; str() is one line: what is wrong and how to fix it."""


@dataclasses.dataclass(eq=False)
class Glyph:
    """One character of a word as the engine read it, and whether it counts as lost."""
    text: str  # the character read ("" for a word with a size and no content: one unread character)
    confidence: float | None  # 0-1, the glyph's own (ALTO GC or CC, hOCR x_conf), None when not given
    word_confidence: float | None  # 0-1, its word's (ALTO WC, hOCR x_wconf), None when not given
    element: ET.Element | None = None  # its ALTO Glyph / hOCR ocrx_cinfo, where the engine wrote one
    lost: bool = False
    box: tuple | None = None  # (left, top, right, bottom) in pixels where the engine gave the glyph's own
    word: "Word | None" = None
    restored: str | None = None  # what write() puts in its place (several characters or "" when folded)
    restored_confidence: float | None = None  # the confidence of the span that restored it
    hyphen: bool = False  # an ALTO HYP: part of the text read, not of the String's CONTENT

    def judge(self, threshold):
        """Lost when unreadable, or when its own confidence or its word's is below threshold.

        The lower of the two, not the glyph's alone: Tesseract's character confidences are
        over-confident (on the stained fixture page the median x_conf is 0.89 for stained glyphs
        against 0.99 for clean ones, and at 0.5 it finds 1 of 21 stained glyphs), while its word
        confidence separates them (median 0.20 against 0.91; 20 of 21 at 0.6). See benchmarks/ocr.py."""
        known = [value for value in (self.confidence, self.word_confidence) if value is not None]
        self.lost = self.text in ("", UNKNOWN_SOURCE) or (bool(known) and min(known) < threshold)


@dataclasses.dataclass(eq=False)
class Word:
    element: ET.Element  # ALTO String / hOCR ocrx_word
    glyphs: list
    space_before: bool  # the format separates it from the word before (ALTO SP, whitespace in hOCR)
    line_start: bool
    box: tuple | None = None  # (left, top, right, bottom) in pixels
    restorations: list = dataclasses.field(default_factory=list)  # (span result, [alternative words]) per span

    def __post_init__(self):
        for glyph in self.glyphs:
            glyph.word = self

    @property
    def text(self):
        return "".join(glyph.text for glyph in self.glyphs)


@dataclasses.dataclass
class OcrPage:
    kind: str  # "alto" or "hocr"
    documents: list  # Document per text block, in reading order
    ids: list  # the block's ID, or "block-N"
    tree: ET.ElementTree = dataclasses.field(repr=False)
    prolog: bytes = dataclasses.field(repr=False)  # the bytes before the root element, kept as they were
    namespaces: dict = dataclasses.field(repr=False)  # prefix -> URI declared on the root
    words: list = dataclasses.field(repr=False)  # [Word] per document
    span_glyphs: list = dataclasses.field(repr=False)  # [[Glyph] per Span] per document

    @property
    def version(self):
        """The ALTO version the root's namespace declares ("2", "3", "4"; "1" without one), None for hOCR."""
        if self.kind != "alto":
            return None
        match = re.search(r"ns-v(\d)#", self.tree.getroot().tag)
        return match.group(1) if match else "1"

    def write(self, results, path):
        """This page with each restored span's characters on its lost glyphs, atomically to `path`.

        Restored words carry their other readings. In ALTO as ALTERNATIVE children of the String
        (PURPOSE "domainfocus:ocr" for the engine's own reading, which also marks the word as
        restored, and "domainfocus:alternative confidence=C" for the model's other candidates), not
        as Glyph/Variant: a Variant is one glyph's recognition option (at most three characters,
        v4 only), while a restoration's alternatives are whole-span texts that may change several
        glyphs and cross words; ALTERNATIVE is the schema's "any alternative for the word", from
        v2 on. In hOCR as the spec's <span class="alternatives"> in the word: <ins class="alt"> the
        chosen reading, <del class="alt"> the others and the engine's, each titled "nlp N" (its
        negative log probability). A span that was not restored keeps its word as read."""
        if len(results) != len(self.documents):
            raise ValueError(f"{len(results)} results for {len(self.documents)} documents")
        for words in self.words:
            for word in words:
                word.restorations = []
                for glyph in word.glyphs:
                    glyph.restored = None
        for spans, result in zip(self.span_glyphs, results):
            for glyphs, span in zip(spans, result["spans"]):
                if span.get("confidence") is not None:
                    place(span, glyphs)
        for words in self.words:
            for word in words:
                if word.restorations:
                    (write_alto_word if self.kind == "alto" else write_hocr_word)(word)
        save(self, path)


# Reading --------------------------------------------------------------------------------------------

def is_ocr_file(path):
    """"alto", "hocr" or None: .hocr/.html/.htm are hOCR; .xml/.alto are what their head shows."""
    extension = os.path.splitext(path)[1].lower()
    if extension in (".hocr", ".html", ".htm"):
        return "hocr"
    if extension not in (".xml", ".alto") or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES).decode("utf-8", "replace")
    # The head, not a parse: a broken ALTO file is still ALTO, and read_ocr says what is broken.
    if re.search(r"<(\w+:)?alto[\s>]", head):
        return "alto"
    if re.search(r"""class\s*=\s*["'][^"']*\bocr_page\b""", head):
        return "hocr"
    return "alto" if extension == ".alto" else None


def read_ocr(path, threshold):
    """The page in `path` (ALTO or hOCR) as Documents, characters below `threshold` lost."""
    tree, prolog, namespaces = parse(path)
    root = tree.getroot()
    if local(root.tag) == "alto":
        kind, blocks = "alto", alto_blocks(root)
    elif local(root.tag) == "html" and any("ocr_page" in classes(element) for element in root.iter()):
        kind, blocks = "hocr", hocr_blocks(root)
    else:
        raise OcrError(f"{path}: neither ALTO (root <alto>) nor hOCR (an element of class ocr_page) but "
                       f"<{local(root.tag)}>; give the OCR engine's ALTO or hOCR output.")
    blocks = [(name, words) for name, words in blocks if words]
    if not blocks:
        unit = "String" if kind == "alto" else "ocrx_word"
        raise OcrError(f"{path}: {kind.upper() if kind == 'alto' else 'hOCR'} with no text (no {unit}); "
                       "run the OCR with text output, or check that this is the right file.")
    documents, ids, span_glyphs = [], [], []
    for number, (name, words) in enumerate(blocks, start=1):
        for word in words:
            for glyph in word.glyphs:
                glyph.judge(threshold)
        document, spans = block_document(words)
        documents.append(document)
        span_glyphs.append(spans)
        ids.append(name or f"block-{number}")
    return OcrPage(kind, documents, ids, tree, prolog, namespaces, [words for _, words in blocks], span_glyphs)


def parse(path):
    """(tree, the bytes before the root element, {prefix: URI} declared on the root)."""
    if not os.path.isfile(path):
        raise OcrError(f"{path}: no such file.")
    with open(path, "rb") as handle:
        data = handle.read()
    namespaces = {}
    try:
        # A parser of our own so the root's namespace declarations are seen: ElementTree drops the
        # unused ones (xmlns:xlink in Tesseract's ALTO) and save() puts them back.
        parser = ET.XMLPullParser(events=("start-ns", "start"))
        parser.feed(data)
        for event, item in parser.read_events():
            if event == "start":
                break
            namespaces.setdefault(item[0], item[1])
        root = ET.fromstring(data)
    except ET.ParseError as error:
        line, column = error.position
        hint = ("hOCR must be XHTML, as Tesseract writes it" if b"ocr_page" in data[:SNIFF_BYTES]
                else "re-export it from the OCR engine, or check the file was not cut short")
        raise OcrError(f"{path}: not well-formed XML (line {line}, column {column + 1}: "
                       f"{str(error).split(':')[0]}); {hint}.") from None
    start = re.search(rb"<(?![?!])", data)  # the root's start tag: after the declaration, DOCTYPE, comments
    return ET.ElementTree(root), data[:start.start()] if start else b"", namespaces


def local(tag):
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def classes(element):
    return (element.get("class") or "").split()


def number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def alto_blocks(root):
    """[(TextBlock ID, [Word])] in document order (ALTO's reading order unless a ReadingOrder says
    otherwise, which this does not follow)."""
    blocks = []
    for block in root.iter():
        if local(block.tag) != "TextBlock":
            continue
        words = []
        for line in (child for child in block if local(child.tag) == "TextLine"):
            space, first = False, True
            for item in line:
                name = local(item.tag)
                if name == "SP":
                    space = True
                elif name == "String":
                    words.append(alto_word(item, space, first))
                    space, first = False, False
                elif name == "HYP" and words and not first:  # the hyphen printed at the line's end: kept text
                    words[-1].glyphs.append(Glyph(item.get("CONTENT") or "-", None, None, word=words[-1], hyphen=True))
        blocks.append((block.get("ID"), words))
    return blocks


def alto_word(string, space_before, line_start):
    content = string.get("CONTENT") or ""
    word_confidence = number(string.get("WC"))
    if not content:
        # No content but a size: the engine saw something it could not read, one lost character.
        sized = number(string.get("WIDTH")) or 0
        return Word(string, [Glyph("", None, word_confidence)] if sized > 0 else [], space_before, line_start,
                    box=alto_box(string))
    characters = list(content)
    glyph_elements = [child for child in string if local(child.tag) == "Glyph"]
    own = [None] * len(characters)
    if len(glyph_elements) == len(characters):
        # GC missing means 0 by the schema; read as "not given" so the word's WC decides instead.
        own = [number(glyph.get("GC")) for glyph in glyph_elements]
    else:
        glyph_elements = [None] * len(characters)  # glyphs that do not match the content: not trusted
        scores = (string.get("CC") or "").split()
        if len(scores) == 1 and len(scores[0]) == len(characters) and len(characters) > 1:
            scores = list(scores[0])  # CC written without separators, one digit per character
        if len(scores) == len(characters):
            # CC is 0 (sure) to 9 (unsure) per character: 1 - CC/9 puts it on WC's 0-1 scale.
            own = [None if number(score) is None else 1 - min(9.0, max(0.0, number(score))) / 9 for score in scores]
    glyphs = [Glyph(character, confidence, word_confidence, element, box=None if element is None else alto_box(element))
              for character, confidence, element in zip(characters, own, glyph_elements)]
    return Word(string, glyphs, space_before, line_start, box=alto_box(string))


def alto_box(element):
    values = [number(element.get(name)) for name in ("HPOS", "VPOS", "WIDTH", "HEIGHT")]
    if None in values:
        return None
    left, top, width, height = values
    return left, top, left + width, top + height


def hocr_blocks(root):
    """[(ocr_par id, [Word])] in document order; an ocr_carea with no ocr_par is one block."""
    blocks = []
    for element in root.iter():
        names = classes(element)
        if "ocr_par" in names or ("ocr_carea" in names and not any("ocr_par" in classes(inner)
                                                                   for inner in element.iter())):
            blocks.append((element.get("id"), hocr_words(element)))
    return blocks


def hocr_words(block):
    words, previous_line, previous = [], None, None
    for line in block.iter():
        if not any(name in ("ocr_line", "ocr_header", "ocr_caption", "ocr_textfloat") for name in classes(line)):
            continue
        for word in line.iter():
            if "ocrx_word" not in classes(word):
                continue
            first = line is not previous_line
            # Tesseract separates words by whitespace (a newline and indentation) between their spans.
            spaced = previous is not None and not first and (previous.tail is None or previous.tail.isspace()
                                                              and previous.tail != "")
            words.append(hocr_word(word, spaced, first))
            previous_line, previous = line, word
    return words


def title_value(element, key):
    match = re.search(rf"(?:^|;)\s*{key}\s+([^;]+)", element.get("title") or "")
    return match.group(1).strip() if match else None


def hocr_word(word, space_before, line_start):
    percent = number(title_value(word, "x_wconf"))
    word_confidence = None if percent is None else percent / 100
    cinfo = [inner for inner in word.iter() if "ocrx_cinfo" in classes(inner)]
    if cinfo:
        glyphs = []
        for element in cinfo:
            text = "".join(element.itertext())
            percent = number(title_value(element, "x_conf"))
            confidence = None if percent is None else percent / 100
            # A cinfo of several characters (a ligature) shares its confidence; an empty one is unread.
            box = hocr_box(element, "x_bboxes")
            glyphs += [Glyph(character, confidence, word_confidence, element, box=box) for character in text or [""]]
        return Word(word, glyphs, space_before, line_start, box=hocr_box(word, "bbox"))
    text = "".join(word.itertext()).strip()
    box = hocr_box(word, "bbox")
    if not text:
        return Word(word, [Glyph("", None, word_confidence)] if box else [], space_before, line_start, box=box)
    return Word(word, [Glyph(character, None, word_confidence) for character in text], space_before, line_start,
                box=box)


def hocr_box(element, key):
    values = [number(value) for value in (title_value(element, key) or "").split()[:4]]
    return tuple(values) if len(values) == 4 and None not in values else None


# Text -----------------------------------------------------------------------------------------------

def unspaced(character):
    """Scripts written without spaces between words (Han, kana, CJK and full-width punctuation), and
    the CJK typesetting symbols clinical Chinese uses among them (℃, Ⅱ)."""
    if not character:
        return False
    code = ord(character)
    return (0x3000 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xF900 <= code <= 0xFAFF or 0xFF00 <= code <= 0xFFEF or 0x20000 <= code <= 0x3FFFF
            or code == 0x2103 or 0x2160 <= code <= 0x217F)


def separator(previous, word):
    """What stands between two words in the block's text.

    Tesseract's chi_sim writes an SP (ALTO) or whitespace (hOCR) between every pair of Strings, one
    character or a few each, Chinese or not ("患者" SP "男" SP "，65" in the fixtures). Those spaces
    are the engine's segmentation, not the document's: clinical Chinese is written without spaces,
    also between Chinese and numbers or units ("体温38.5℃"). So no space where a Chinese character
    is on either side; Latin words keep theirs."""
    if word.line_start:
        return "\n"
    if not word.space_before or not previous.glyphs or not word.glyphs:
        return ""
    if unspaced(previous.glyphs[-1].text) or unspaced(word.glyphs[0].text):
        return ""
    return " "


def block_document(words):
    """(Document of the block's text, [Glyph] per Span).

    Each maximal run of lost characters is one Span of as many characters as lost glyphs. Whitespace
    between two lost words stays inside the span's marker ("□□ □□□", length 5): the marker must be
    the text it stands for so that "".join(parts) is the text, and a space or line break the model
    never sees cut in two would make two restorations of what may be one term. Whitespace before and
    after a run stays outside it."""
    pieces = []  # (text, Glyph or None): None for kept whitespace
    for index, word in enumerate(words):
        if index:
            gap = separator(words[index - 1], word)
            if gap:
                pieces.append((gap, None))
        pieces += [(UNIT if glyph.lost else glyph.text, glyph) for glyph in word.glyphs]
    parts, spans, kept = [], [], ""
    position = 0
    while position < len(pieces):
        text, glyph = pieces[position]
        if glyph is None or not glyph.lost:
            kept += text
            position += 1
            continue
        end, lost = position, []
        while end < len(pieces):  # the run: lost glyphs and the whitespace between them
            if pieces[end][1] is not None and pieces[end][1].lost:
                lost.append(pieces[end][1])
                last = end
            elif pieces[end][1] is not None:
                break
            end += 1
        marker = "".join(text for text, _ in pieces[position:last + 1])
        if kept:
            parts.append(kept)
            kept = ""
        parts.append(Span(marker, len(lost), UNIT))
        spans.append(lost)
        position = last + 1
    if kept:
        parts.append(kept)
    return Document("".join(part if isinstance(part, str) else part.marker for part in parts), parts), spans


# Writing --------------------------------------------------------------------------------------------

def characters_of(text):
    """The characters a span's text puts on glyphs: composed (NFC), whitespace not counted."""
    return list(visible(unicodedata.normalize("NFC", text)))


def place(span, glyphs):
    """Put span["text"] on `glyphs` (restored), one character each, and note the span and its
    alternatives on the words they change.

    A text of another length than the glyphs (a span of unknown length, or a character the restorer
    folded, "°C" for "℃") cannot be shared out one by one: the whole text goes on the first glyph and
    the others are emptied, so the word reads right and no character lands on the wrong glyph. A
    UNIT in the text is a character the model could not write: its glyph keeps what was read."""
    for glyph, piece in zip(glyphs, spread(span["text"], len(glyphs))):
        if piece != UNIT:
            glyph.restored, glyph.restored_confidence = piece, span["confidence"]
    words = {}
    for glyph in glyphs:
        words.setdefault(id(glyph.word), glyph.word)
    for word in words.values():
        alternatives = []
        for alternative in span.get("alternatives", []):
            spread_out = dict(zip(map(id, glyphs), spread(alternative["text"], len(glyphs))))
            text = "".join(spread_out.get(id(glyph), glyph.text) if spread_out.get(id(glyph)) != UNIT
                           else glyph.text for glyph in word.glyphs)
            alternatives.append((text, alternative.get("confidence")))
        word.restorations.append((span, alternatives))


def spread(text, count):
    characters = characters_of(text)
    if len(characters) == count:
        return characters
    return ["".join(characters)] + [""] * (count - 1)


def restored_text(word):
    """The word's content after restoration (without a line-end hyphen, which is its own HYP element)."""
    return "".join(glyph.text if glyph.restored is None else glyph.restored for glyph in word.glyphs
                   if not glyph.hyphen)


def word_confidence(word):
    """As sure as its least sure part: the lowest confidence of the spans restored in it and of the
    characters kept as the engine read them (so a kept character never looks surer than it was read)."""
    kept = [glyph.confidence for glyph in word.glyphs
            if glyph.restored is None and not glyph.hyphen and glyph.confidence is not None]
    return min([span["confidence"] for span, _ in word.restorations] + kept)


def write_alto_word(word):
    string = word.element
    tag = string.tag.rsplit("}", 1)[0] + "}" if string.tag.startswith("{") else ""
    original = string.get("CONTENT") or ""
    confidence = word_confidence(word)
    string.set("CONTENT", restored_text(word))
    string.set("WC", f"{confidence:.4g}")
    if string.get("CC") is not None:
        string.set("CC", alto_cc(word))
    for glyph in word.glyphs:
        restored = glyph.restored is not None and glyph.element is not None
        if restored and len(glyph.restored) == 1:  # a Glyph holds one character; folded text stays on the String
            glyph.element.set("CONTENT", glyph.restored)
            glyph.element.set("GC", f"{glyph.restored_confidence:.4g}")
    children = list(string)
    at = next((index for index, child in enumerate(children) if local(child.tag) == "Glyph"), len(children))
    new = [alto_alternative(tag, original, f"{PURPOSE}:ocr")]
    for _, alternatives in word.restorations:
        new += [alto_alternative(tag, text, f"{PURPOSE}:alternative confidence={score:.4g}"
                                 if score is not None else f"{PURPOSE}:alternative")
                for text, score in alternatives]
    for offset, element in enumerate(new):
        string.insert(at + offset, element)


def alto_alternative(tag, text, purpose):
    element = ET.Element(tag + "ALTERNATIVE", {"PURPOSE": purpose})
    element.text = text
    return element


def alto_cc(word):
    """CC again for the restored content: kept characters their digit, restored ones the span's
    confidence on CC's 0 (sure) to 9 scale."""
    glyphs = [glyph for glyph in word.glyphs if not glyph.hyphen]
    old = (word.element.get("CC") or "").split()
    if len(old) == 1 and len(old[0]) == len(glyphs) > 1:
        old = list(old[0])  # CC written without separators, one digit per character, as alto_word reads it
    digits = old if len(old) == len(glyphs) else ["9"] * len(glyphs)  # unknown: not sure
    confidence = word_confidence(word)
    written = []
    for digit, glyph in zip(digits, glyphs):
        if glyph.restored is None:
            written.append(digit)
        else:
            written += [str(round(9 * (1 - confidence)))] * len(glyph.restored)
    return " ".join(written)


def write_hocr_word(word):
    element = word.element
    confidence = word_confidence(word)
    original = word.text
    title = element.get("title") or ""
    wconf = f"x_wconf {round(confidence * 100)}"
    element.set("title", re.sub(r"x_wconf\s+[^;]+", wconf, title) if "x_wconf" in title
                else (title + "; " if title else "") + wconf)
    prefix = element.tag.rsplit("}", 1)[0] + "}" if element.tag.startswith("{") else ""
    chosen = ET.Element(prefix + "ins", {"class": "alt", "title": nlp(confidence)})
    by_element = {}  # an ocrx_cinfo may hold several characters (a ligature): its glyphs together
    for glyph in word.glyphs:
        if glyph.element is not None:
            by_element.setdefault(id(glyph.element), (glyph.element, []))[1].append(glyph)
    if by_element:
        for cinfo, glyphs in by_element.values():
            restored = [glyph for glyph in glyphs if glyph.restored is not None]
            if not restored:
                continue
            for child in list(cinfo):
                cinfo.remove(child)
            cinfo.text = "".join(glyph.text if glyph.restored is None else glyph.restored for glyph in glyphs)
            lowest = min(glyph.restored_confidence for glyph in restored)
            cinfo.set("title", re.sub(r"x_conf\s+[^;]+", f"x_conf {lowest * 100:.2f}", cinfo.get("title") or ""))
        # The character boxes move into the chosen reading, so they still say where each one is.
        chosen.text = element.text
        for child in list(element):
            element.remove(child)
            chosen.append(child)
    else:
        for child in list(element):
            element.remove(child)
        chosen.text = restored_text(word)
    chosen.tail = None
    alternatives = ET.Element(prefix + "span", {"class": "alternatives"})
    alternatives.append(chosen)
    for _, others in word.restorations:
        for text, score in others:
            alternatives.append(hocr_del(prefix, text, score))
    read = hocr_del(prefix, original, word.glyphs[0].word_confidence)  # the engine's reading, never hidden
    alternatives.append(read)
    element.text = None
    element.append(alternatives)


def hocr_del(prefix, text, confidence):
    element = ET.Element(prefix + "del", {"class": "alt"})
    if confidence is not None:
        element.set("title", nlp(confidence))
    element.text = text
    return element


def nlp(confidence):
    """The hOCR spec's "nlp": negative log probability."""
    return f"nlp {-math.log(max(confidence, 1e-9)):.4f}"


def save(page, path):
    # The document's own prefixes, its default namespace unprefixed, so that no ns0: appears. The
    # registry is ElementTree's (process-wide); it keeps one URI per prefix, so the last page written
    # wins, which is what a later write of the same kind of file wants. (tostring's default_namespace
    # cannot be used: it refuses the unqualified attributes that ALTO and hOCR are made of.)
    for prefix, uri in page.namespaces.items():
        ET.register_namespace(prefix, uri)
    # hOCR is read by browsers as HTML too, where <title/> would swallow the page: end tags written out.
    body = with_declarations(ET.tostring(page.tree.getroot(), encoding="unicode",
                                         short_empty_elements=page.kind == "alto"), page.namespaces)
    # By hand: ElementTree drops a DOCTYPE (hOCR has one) and rewrites the XML declaration, so the
    # bytes before the root are copied as they were.
    write_file_atomically(path, page.prolog + body.encode("utf-8") + b"\n")


def with_declarations(body, namespaces):
    """The root's namespace declarations that ElementTree dropped (declared, never used) put back."""
    end = body.index(">")
    start_tag = body[:end]
    missing = [f' xmlns:{prefix}="{uri}"' for prefix, uri in namespaces.items()
               if prefix and f"xmlns:{prefix}=" not in start_tag and prefix != "xml"]
    closing = end - 1 if body[end - 1] == "/" else end
    return body[:closing] + "".join(missing) + body[closing:]
