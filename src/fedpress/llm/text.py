"""Real text that ships in packages, read as files, and the corruption tiers that define quality.

Sources (no download): ``gensim``'s test data, read without importing gensim --
``enwiki-*-shortened.bz2`` (Wikipedia XML; wiki markup is stripped, paragraphs become samples)
and ``lee_background.cor`` (one news article per line; articles are split into paragraphs of
about three sentences).

Quality, way 1 (controlled): corruption tiers. Tier ``k`` corrupts each word independently with
probability ``CORRUPTION_RATES[k]`` = 0, 0.1, 0.25, 0.5, applying one of five equally likely
corruptions: drop the word, repeat it, swap it with the next word, replace it with a random word
of the corpus vocabulary, or a character typo (two adjacent characters swapped). Task items are
corrupted by replacing the answer with a wrong one with the same probability.
Quality, way 2 (measured): per-sample perplexity under the base model (see ``partition.py``).
"""

from __future__ import annotations

import bz2
import importlib.util
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

CORRUPTION_RATES = (0.0, 0.1, 0.25, 0.5)
CORRUPTIONS = ("drop", "repeat", "swap", "replace", "typo")


def gensim_test_data() -> Path:
    """The folder of gensim's shipped test data, found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gensim is not installed (pip install gensim); it ships the text data")
    d = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    if not d.is_dir():
        raise FileNotFoundError(f"gensim test data folder {d} is missing")
    return d


_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S)
_TAG = re.compile(r"<[^>]+>")
_FILE = re.compile(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXT = re.compile(r"\[https?://\S+\s*([^\]]*)\]")
_HEAD = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)


def strip_wiki(markup: str) -> str:
    """Plain text from wiki markup (templates, tables, refs, files and tags removed; links kept)."""
    s = _REF.sub("", markup)
    for _ in range(5):  # nested templates, innermost first
        s2 = _TEMPLATE.sub("", s)
        if s2 == s:
            break
        s = s2
    s = _TABLE.sub("", s)
    s = _FILE.sub("", s)
    s = _LINK.sub(r"\1", s)
    s = _EXT.sub(r"\1", s)
    s = _HEAD.sub("", s)
    s = _TAG.sub("", s)
    s = s.replace("'''", "").replace("''", "")
    return s


def _paragraphs(text: str, min_words: int) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln for ln in para.splitlines() if not ln.lstrip().startswith(("*", "#", "|", ":", "!"))]
        p = " ".join(" ".join(lines).split())
        if len(p.split()) >= min_words:
            out.append(p)
    return out


def wiki_paragraphs(path: Path | None = None, min_words: int = 20) -> list[str]:
    """Paragraphs of the shipped Wikipedia sample, markup stripped, in file order."""
    if path is None:
        path = next(iter(sorted(gensim_test_data().glob("enwiki-*-shortened.bz2"))), None)
        if path is None:
            raise FileNotFoundError("gensim's enwiki-*-shortened.bz2 test file is missing")
    out: list[str] = []
    with bz2.open(path, "rb") as f:
        for _, elem in ET.iterparse(f):
            if elem.tag.endswith("}text") or elem.tag == "text":
                if elem.text and not elem.text.lstrip().upper().startswith("#REDIRECT"):
                    out += _paragraphs(strip_wiki(elem.text), min_words)
                elem.clear()
    return out


def news_paragraphs(path: Path | None = None, sentences: int = 3) -> list[str]:
    """The Lee news articles split into passages of ``sentences`` sentences."""
    path = path or gensim_test_data() / "lee_background.cor"
    out: list[str] = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        sents = re.split(r"(?<=[.!?])\s+", line.strip())
        for i in range(0, len(sents), sentences):
            p = " ".join(sents[i : i + sentences]).strip()
            if len(p.split()) >= 8:
                out.append(p)
    return out


def corrupt(text: str, rate: float, rng: np.random.Generator, vocab: list[str]) -> str:
    """Word-level corruption at ``rate`` (see the module docstring for the five kinds)."""
    if rate <= 0:
        return text
    words = text.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if rng.random() >= rate:
            out.append(w)
            i += 1
            continue
        kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
        if kind == "repeat":
            out += [w, w]
        elif kind == "swap" and i + 1 < len(words):
            out += [words[i + 1], w]
            i += 1
        elif kind == "replace" and vocab:
            out.append(vocab[int(rng.integers(len(vocab)))])
        elif kind == "typo" and len(w) > 1:
            j = int(rng.integers(len(w) - 1))
            out.append(w[:j] + w[j + 1] + w[j] + w[j + 2 :])
        elif kind == "drop":
            pass
        else:
            out.append(w)
        i += 1
    return " ".join(out)


def corrupt_answer(answer: str, rate: float, rng: np.random.Generator) -> str:
    """A wrong number in place of ``answer`` with probability ``rate`` (task-item corruption)."""
    if rate <= 0 or rng.random() >= rate:
        return answer
    try:
        v = int(answer)
    except ValueError:
        return answer
    off = int(rng.integers(1, 4)) * (1 if rng.random() < 0.5 else -1)
    return str(v + off)
