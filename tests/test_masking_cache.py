"""Fresh masks find each document's lexicon terms once: every epoch draws exactly the masks it drew
when the terms were found anew each time, in the training process and in DataLoader workers.

    python -m pytest tests/test_masking_cache.py -q
"""

import pytest
from conftest import ROOT, clinical_lexicon, clinical_sentences, write_lines
from hypothesis import given, settings
from hypothesis import strategies as st

from domainfocus.data import MaskedExamples, build_masker, read_pieces
from domainfocus.masking import Lexicon


def first_character_find(terms, text):
    """Lexicon.find as it was before issue 23 (terms indexed by first character alone): the reference
    the faster index must agree with."""
    lengths = {}
    for term in terms:
        lengths.setdefault(term[0], set()).add(len(term))

    def latin(character):
        return character.isascii() and character.isalnum()

    def whole_word(start, end):
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        return not ((latin(text[start]) and latin(before)) or (latin(text[end - 1]) and latin(after)))

    found, position = [], 0
    while position < len(text):
        for length in sorted(lengths.get(text[position], ()), reverse=True):
            end = position + length
            if end <= len(text) and text[position:end] in terms and whole_word(position, end):
                found.append((position, end))
                position = end
                break
        else:
            position += 1
    return found


# Latin letters and digits (whole-word rules), CJK, full-width punctuation, ℃ ㎎ Ⅱ, spaces.
CHARACTERS = st.sampled_from(list("ab1Z 患者胸痛型，。（）℃㎎Ⅱ-"))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.text(CHARACTERS, max_size=40), st.booleans())
def test_the_two_character_index_finds_what_the_first_character_index_found(data, text, one_character_terms):
    # Terms cut from the text itself, so that they match, overlap and nest, and a few that need not occur.
    cuts = st.tuples(st.integers(0, max(len(text) - 1, 0)), st.integers(1 if one_character_terms else 2, 7))
    terms = {text[start:start + length] for start, length in data.draw(st.lists(cuts, max_size=12))}
    terms |= set(data.draw(st.lists(st.text(CHARACTERS, min_size=2, max_size=5), max_size=4)))
    terms = {term for term in terms if term}
    hard = set(data.draw(st.lists(st.sampled_from(sorted(terms)), max_size=3))) if terms else set()
    assert Lexicon(terms - hard, hard).find(text) == first_character_find(terms, text)


@pytest.fixture(scope="module")
def clinical_config(tmp_path_factory):
    """Raw clinical notes with full-width punctuation and ℃ ㎎ Ⅱ, their lexicon, hard terms and noise."""
    folder = tmp_path_factory.mktemp("cache")
    lexicon = clinical_lexicon()
    corpus = write_lines(folder / "notes.txt", clinical_sentences(600, seed=3))
    from train import default_config

    return {**default_config(), "TRAIN_FILE": str(corpus), "NOISE": 0.05,
            "LEXICON_FILE": str(write_lines(folder / "lexicon.txt", lexicon[::2] + ["mmHg", "NYHA"])),
            "HARD_LEXICON_FILE": str(write_lines(folder / "hard.txt", lexicon[1::2] + ["Ⅲ级"]))}


def matched_every_time(pieces, masker, seed, epoch, index):
    """An example drawn as before issue 23: the lexicon searched at every draw."""
    masker.reseed(f"{seed}:{epoch}:{index}")
    return masker.example(pieces[index])


@pytest.mark.parametrize("seed", [0, 42])
def test_fresh_masks_drawn_from_kept_terms_are_the_masks_of_searching_every_epoch(clinical_config, seed):
    pieces = read_pieces(clinical_config["TRAIN_FILE"], clinical_config, 0)["train"]
    assert any("℃" in piece for piece in pieces) and any("㎎" in piece for piece in pieces)
    dataset = MaskedExamples(pieces, build_masker(clinical_config), seed, fresh=True)
    reference = build_masker(clinical_config)
    hard_spans = 0
    for epoch in (2, 0, 1, 2):  # out of order, and epoch 2 twice: the kept terms serve any epoch
        for index in range(len(pieces)):
            drawn = dataset.draw(epoch, index)
            assert drawn == matched_every_time(pieces, reference, seed, epoch, index), (epoch, pieces[index])
            hard_spans += sum(pieces[index][start:end] in reference.lexicon.hard for start, end, _ in drawn[1])
    assert hard_spans  # the hard terms were drawn at their own probability too


def test_each_document_is_searched_once_however_many_epochs(clinical_config, monkeypatch):
    pieces = read_pieces(clinical_config["TRAIN_FILE"], clinical_config, 0)["train"]
    masker = build_masker(clinical_config)
    searched = []
    find = masker.lexicon.find
    monkeypatch.setattr(masker.lexicon, "find", lambda text: searched.append(text) or find(text))
    dataset = MaskedExamples(pieces, masker, 42, fresh=True)
    for epoch in range(4):
        for index in range(len(pieces)):
            dataset[epoch * len(pieces) + index]
    assert sorted(searched) == sorted(pieces)


def test_dataloader_workers_draw_the_masks_of_the_training_process(clinical_config):
    """Workers start from the training process's kept terms (some filled, as --check's sample fills
    them) and search the rest themselves: the batches are the same either way."""
    from torch.utils.data import DataLoader

    pieces = read_pieces(clinical_config["TRAIN_FILE"], clinical_config, 0)["train"]
    dataset = MaskedExamples(pieces, build_masker(clinical_config), 42, fresh=True)
    for index in range(0, len(pieces), 3):
        dataset.draw(0, index)
    indices = [epoch * len(pieces) + index for epoch in (1, 2) for index in range(len(pieces))]
    loader = DataLoader(dataset, sampler=indices, batch_size=16, num_workers=2, collate_fn=list)
    in_workers = [example for batch in loader for example in batch]
    reference = build_masker(clinical_config)
    assert in_workers == [tuple(matched_every_time(pieces, reference, 42, index // len(pieces),
                                                   index % len(pieces))[0].values()) for index in indices]


def test_the_demo_lexicon_finds_what_it_found_before():
    """The demo's English and Chinese sentences, its lexicon and pieces cut from the sentences: not one
    match moves."""
    lines = (ROOT / "demo" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:400]
    terms = {line.strip() for line in (ROOT / "demo" / "lexicon.txt").read_text(encoding="utf-8").splitlines()}
    terms |= {line[start:start + length] for line in lines for start, length in ((3, 2), (10, 4), (20, 6))}
    lexicon = Lexicon(terms)
    assert all(lexicon.find(line) == first_character_find(terms, line) for line in lines)
