"""Write the offline tokenizers shipped in data/: CLIP-style BPE and T5-style Unigram.

Four tokenizers, all deterministic (re-running rewrites identical files):

- ``data/models/tiny-random/tokenizer``: byte-level base symbols plus left-to-right merges for the
  words of the shipped prompt sets and the shape-scene grammar (~1.5 k entries). BPE applies merges
  by rank, so a word whose chain an earlier merge pre-empts stays split ("green" -> g re e n,
  "black" -> b la c k). The trained ``tiny`` model learned with this tokenizer and ships a copy, so
  changing it here needs a retrain there.
- ``data/tokenizers/clip-synthetic-49408``: the tiny vocabulary extended with synthetic
  merges up to CLIP's real vocabulary size (49 408), for the realistic architectures, so that
  token ids span the whole embedding table.
- ``data/tokenizers/t5-shapes``: a T5-style Unigram (SentencePiece-like, ``tokenizer.json`` for
  ``T5TokenizerFast``): ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, one ``▁word`` piece per word above and
  single letters and punctuation as fallback, no sentinel tokens. ``tiny-flux`` trained with it and ships
  a copy, so changing it here needs a retrain there.
- ``data/tokenizers/t5-synthetic-32100``: the same pieces extended with synthetic letter pieces to
  T5's real 32 000, plus its 100 ``<extra_id_n>`` sentinels (32 100, as T5-XXL's tokenizer), for
  ``flux-arch`` and ``sd35m-arch``.

Usage: ``python scripts/make_tokenizers.py``
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
T5_VOCAB_SIZE = 32000  # pieces before T5's 100 sentinel tokens
T5_SPECIALS = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Prompt sets added after the CLIP tokenizers were made (their words are already in EXTRA_WORDS);
# reading them would reorder the merges, and the trained ``tiny`` depends on that order.
LATER_SETS = {"shapes"}

# Words beyond the prompt files: the shape-scene grammar of the trained tiny model and
# common prompt vocabulary, so typical prompts tokenize into whole words.
EXTRA_WORDS = """
a an the and of on in at with to by under over near left right top bottom center middle
red green blue yellow orange purple pink white black gray grey brown cyan magenta
circle square triangle star cross ring diamond hexagon small large big tiny background
photo portrait landscape painting drawing sketch render realistic detailed high quality
cat dog horse bird tree flower house car city street mountain mountains lake river sea ocean
sky sun moon night day light lights neon forest castle fantasy modern woman man eyes
astronaut mars space riding beautiful blurry lowres bad ugly deformed watermark text
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def prompt_words() -> list[str]:
    words: list[str] = []
    for path in sorted((ROOT / "data" / "prompts").glob("*.json")):
        if path.stem in LATER_SETS:
            continue
        for case in json.loads(path.read_text())["cases"]:
            for field in ("prompt", "negative_prompt"):
                words += re.findall(r"[a-z]+", (case.get(field) or "").lower())
    return words + EXTRA_WORDS


def whole_word_merges(words: list[str]) -> list[tuple[str, str]]:
    """Left-to-right merges that build each word as one token (with the end-of-word mark)."""
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in dict.fromkeys(words):
        if len(word) < 2:
            continue
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            if (left, right) not in seen:
                seen.add((left, right))
                merges.append((left, right))
            left += right
    return merges


def base_vocab() -> list[str]:
    chars = list(bytes_to_unicode().values())
    return chars + [c + "</w>" for c in chars]


def synthetic_merges(vocab: list[str], merges: list[tuple[str, str]], size: int) -> list[tuple[str, str]]:
    """Extend ``merges`` with letter-pair merges until the vocabulary holds ``size`` entries."""
    known = set(vocab) | {a + b for a, b in merges}
    out = list(merges)
    letters = "abcdefghijklmnopqrstuvwxyz"
    prefixes = list(letters)
    target = size - len(vocab) - 2
    while len(out) < target:
        grown = []
        for prefix, letter in itertools.product(prefixes, letters):
            for right in (letter, letter + "</w>"):
                if len(out) >= target:
                    break
                if prefix + right not in known:
                    known.add(prefix + right)
                    out.append((prefix, right))
            grown.append(prefix + letter)
        prefixes = grown
    return out


def write_tokenizer(folder: Path, merges: list[tuple[str, str]]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    tokens = base_vocab() + [a + b for a, b in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token"
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return len(vocab)


def t5_pieces(words: list[str]) -> list[tuple[str, float]]:
    """Unigram pieces: whole words (log-prob -1, so a known word is one piece), then letters (-10)."""
    pieces = [("▁", -2.0)] + [("▁" + w, -1.0) for w in dict.fromkeys(words)]
    chars = LETTERS + LETTERS.upper() + "0123456789" + ",.;:!?'\"-()"
    pieces += [(c, -10.0) for c in chars] + [("▁" + c, -10.0) for c in chars]
    seen, out = set(), []
    for piece, score in pieces:
        if piece not in seen:
            seen.add(piece)
            out.append((piece, score))
    return out


def synthetic_pieces(pieces: list[tuple[str, float]], size: int) -> list[tuple[str, float]]:
    """Extend ``pieces`` with letter-pair pieces (scored below whole words) up to ``size`` entries."""
    known = {p for p, _ in pieces}
    out = list(pieces)
    prefixes = list(LETTERS)
    while len(out) < size:
        grown = []
        for prefix, letter in itertools.product(prefixes, LETTERS):
            for piece in (prefix + letter, "▁" + prefix + letter):
                if len(out) < size and piece not in known:
                    known.add(piece)
                    out.append((piece, -12.0 - 0.5 * len(prefix)))
            grown.append(prefix + letter)
        prefixes = grown
    return out


def write_t5_tokenizer(folder: Path, pieces: list[tuple[str, float]], extra_ids: int) -> int:
    from transformers import T5TokenizerFast

    # Case is kept, as T5's: a capitalised word falls back to letters (upper-case ones included).
    tok = T5TokenizerFast(vocab=T5_SPECIALS + pieces, extra_ids=extra_ids, model_max_length=512)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    return len(tok)


def main() -> None:
    words = prompt_words()
    merges = whole_word_merges(words)
    tiny = write_tokenizer(ROOT / "data" / "models" / "tiny-random" / "tokenizer", merges)
    full = write_tokenizer(
        ROOT / "data" / "tokenizers" / "clip-synthetic-49408",
        synthetic_merges(base_vocab(), merges, CLIP_VOCAB_SIZE),
    )
    pieces = t5_pieces(words)
    t5_tiny = write_t5_tokenizer(ROOT / "data" / "tokenizers" / "t5-shapes", pieces, extra_ids=0)
    t5_full = write_t5_tokenizer(ROOT / "data" / "tokenizers" / "t5-synthetic-32100",
                                 synthetic_pieces(pieces, T5_VOCAB_SIZE - len(T5_SPECIALS)), extra_ids=100)
    print(f"tiny tokenizer: {tiny} tokens; synthetic CLIP tokenizer: {full} tokens; "
          f"tiny T5 tokenizer: {t5_tiny} tokens; synthetic T5 tokenizer: {t5_full} tokens")


if __name__ == "__main__":
    main()
