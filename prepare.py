"""Raw domain text + term lexicon -> training data for train.py (lexicon-guided whole-term masking).

    python prepare.py --text notes.txt --lexicon terms.txt --out data
    python prepare.py --text a.txt b.jsonl --lexicon terms.txt --hard-lexicon rare.txt --noise 0.01 --out data

Writes DIR/train.jsonl, DIR/valid.jsonl (T5 span-corruption format) and DIR/stats.json.

* Text: .txt with one document per line (or, with --documents paragraphs, documents separated
  by blank lines), or .jsonl with the text in --text-field. UTF-8.
* Lexicon: one term per line, optionally followed by a tab and a number (a frequency, ignored).
* Terms are found by longest match and masked as one unit: a term with probability
  --term-mask-prob, a hard term (--hard-lexicon) with --hard-term-mask-prob. When terms alone
  mask less than --mask-rate of the maskable characters, random short spans make up the rest.
  Punctuation and whitespace are never masked; at most 99 spans per example.
* Documents are de-duplicated on their text after NFKC without whitespace (a copy that differs
  only in full-width punctuation or spaces is the same document), then split by a hash of that
  text, or of --group-field (a patient or record id in .jsonl) where given: no text and no group
  is on both sides. Documents are cut into examples at sentence ends (at most --max-chars
  characters); stats.json counts the repeats removed and the validation examples whose text
  (or whose text but for digits and punctuation) a training example also has.
* --noise drops or replaces that share of the unmasked characters, like OCR damage.
* It streams: memory grows only by about 60 bytes per document and example (the hashes that
  find repeats). The same inputs and --seed give the same files.
"""

import argparse
import json
import os
import sys

from domainfocus.masking import (Lexicon, Masker, PrepareError, overlap, read_documents, read_lexicon, text_digests,
                                 split_documents)


def prepare(options, report=print):
    """Stream the documents into DIR/train.jsonl and DIR/valid.jsonl; return the statistics."""
    for name in ("term_mask_prob", "hard_term_mask_prob", "mask_rate", "valid_ratio", "noise"):
        if not 0 <= getattr(options, name) <= 1:
            raise PrepareError(f"--{name.replace('_', '-')}={getattr(options, name)}: must lie between 0 and 1.")
    if options.max_chars < 8 or options.max_span < 1:
        raise PrepareError("--max-chars must be at least 8 and --max-span at least 1.")
    for name in ("term_mask_prob", "hard_term_mask_prob"):
        if getattr(options, name) > 0.8:
            report(f"warning: --{name.replace('_', '-')}={getattr(options, name)} masks nearly every term; the "
                   "model then sees them too rarely in context. 0.5-0.7 is the usual range.")
    terms = read_lexicon(options.lexicon)
    hard_terms = read_lexicon(options.hard_lexicon) if options.hard_lexicon else []
    lexicon = Lexicon(terms, hard_terms)
    masker = Masker(lexicon, options.term_mask_prob, options.hard_term_mask_prob, options.mask_rate,
                    options.max_span, options.noise, options.seed)
    os.makedirs(options.out, exist_ok=True)
    paths = {split: os.path.join(options.out, f"{split}.jsonl") for split in ("train", "valid")}
    stats = {"documents": 0, "documents_valid": 0, "examples_train": 0, "examples_valid": 0, "characters": 0,
             "bytes": 0, "masked_spans": 0, "term_spans": 0, "masked_characters": 0, "maskable_characters": 0,
             "duplicates": 0}
    terms_seen = set()
    sample = []
    seen = {"train": set(), "valid": set()}  # the examples' text_digests
    files = {split: open(path + ".tmp", "w", encoding="utf-8") for split, path in paths.items()}
    try:
        documents = read_documents(options.text, options.documents, options.text_field, options.group_field)
        for split, document, pieces in split_documents(documents, options.valid_ratio, options.seed, options.max_chars,
                                                       stats):
            stats["documents"] += 1
            stats["documents_valid"] += split == "valid"
            stats["bytes"] += len(document.encode("utf-8"))
            for piece in pieces:
                example, spans, (masked, maskable_characters), terms_found = masker.example(piece)
                files[split].write(json.dumps(example, ensure_ascii=False) + "\n")
                stats[f"examples_{split}"] += 1
                stats["characters"] += len(piece)
                stats["masked_spans"] += len(spans)
                stats["term_spans"] += sum(is_term for _, _, is_term in spans)
                stats["masked_characters"] += masked
                stats["maskable_characters"] += maskable_characters
                terms_seen.update(piece[start:end] for start, end in terms_found)
                seen[split].add(text_digests(piece))
                if len(sample) < 2000:
                    sample.append(piece)
    finally:
        for handle in files.values():
            handle.close()
    if stats["examples_train"] == 0:
        raise PrepareError("no text found in --text files; nothing was written.")
    for split, path in paths.items():
        os.replace(path + ".tmp", path)
    # Distinct documents can still share sentences (templates): validation examples whose text, or
    # whose text without digits and punctuation, some training example also has.
    in_train, near_train = overlap(seen["train"], seen["valid"])
    stats.update(
        valid_examples_in_train=in_train,
        valid_examples_near_train=near_train,
        term_span_share=stats["term_spans"] / max(stats["masked_spans"], 1),
        mask_rate=stats["masked_characters"] / max(stats["maskable_characters"], 1),
        lexicon_terms=len(lexicon.terms),
        lexicon_coverage=len(terms_seen) / len(lexicon.terms),
        estimated_tokens=estimate_tokens(options.tokenizer, sample, stats["characters"]),
        tokenizer=options.tokenizer,
        seed=options.seed,
    )
    with open(os.path.join(options.out, "stats.json"), "w", encoding="utf-8") as handle:
        json.dump(stats, handle, indent=2)
    if stats["examples_valid"] == 0:
        report("warning: no document went to valid.jsonl; add documents or raise --valid-ratio before training.")
    report(format_report(stats, paths))
    return stats


def estimate_tokens(tokenizer_path, sample, characters):
    """Tokens in the whole corpus, extrapolated from a sample by tokens per character."""
    if not tokenizer_path or not sample:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=os.path.isdir(tokenizer_path))
    tokens = sum(len(ids) for ids in tokenizer(sample, add_special_tokens=False)["input_ids"])
    return round(tokens / sum(len(text) for text in sample) * characters)


def format_report(stats, paths):
    tokens = (f"about {stats['estimated_tokens']:,} tokens" if stats["estimated_tokens"] is not None
              else "pass --tokenizer MODEL_FOLDER for a token estimate")
    return "\n".join([
        f"documents        {stats['documents']:,} ({stats['documents_valid']:,} for validation), "
        f"{stats['duplicates']:,} repeated ones removed",
        f"overlap          {stats['valid_examples_in_train']:,} validation examples also in training, "
        f"{stats['valid_examples_near_train']:,} alike but for digits and punctuation",
        f"examples         {stats['examples_train']:,} -> {paths['train']}, "
        f"{stats['examples_valid']:,} -> {paths['valid']}",
        f"corpus           {stats['bytes'] / 1e6:,.1f} MB, {stats['characters']:,} characters, {tokens}",
        f"masked spans     {stats['masked_spans']:,}, of them lexicon terms {stats['term_span_share']:.1%}",
        f"mask rate        {stats['mask_rate']:.1%} of the maskable characters",
        f"lexicon coverage {stats['lexicon_coverage']:.1%} of {stats['lexicon_terms']:,} terms occur in the text",
    ])


def parse_options(argv=None):
    parser = argparse.ArgumentParser(description="Raw domain text + term lexicon -> train.jsonl / valid.jsonl.")
    parser.add_argument("--text", nargs="+", required=True, help=".txt or .jsonl files with the raw text")
    parser.add_argument("--lexicon", required=True, help="one term per line, optionally term<TAB>frequency")
    parser.add_argument("--hard-lexicon", help="terms to mask at --hard-term-mask-prob")
    parser.add_argument("--out", required=True, help="folder for train.jsonl, valid.jsonl, stats.json")
    parser.add_argument("--documents", choices=("lines", "paragraphs"), default="lines",
                        help=".txt: one document per line, or documents separated by blank lines")
    parser.add_argument("--text-field", default="text", help=".jsonl: the field holding the text")
    parser.add_argument("--group-field", default="", help=".jsonl: a field (patient or record id) whose documents "
                        "all go to the same side of the split")
    parser.add_argument("--term-mask-prob", type=float, default=0.6, help="chance that a found term is masked")
    parser.add_argument("--hard-term-mask-prob", type=float, default=0.7, help="the same for hard terms")
    parser.add_argument("--mask-rate", type=float, default=0.22, help="share of maskable characters to mask")
    parser.add_argument("--max-span", type=int, default=3, help="longest random span, in characters or words")
    parser.add_argument("--max-chars", type=int, default=200, help="longest example, in characters")
    parser.add_argument("--valid-ratio", type=float, default=0.05, help="share of documents for validation")
    parser.add_argument("--noise", type=float, default=0.0, help="share of unmasked characters damaged")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tokenizer", help="model folder or hub name, for the token estimate")
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        prepare(parse_options())
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
