"""Distinctive words per segment with class-based TF-IDF (c-TF-IDF, as in BERTopic).

All texts of a segment are one "class document". For word ``w`` and class ``c``::

    tf(w, c)  = count(w, c) / total words in c          (so big segments do not dominate)
    idf(w)    = log(1 + A / f(w))                       A = mean words per class,
                                                        f(w) = count of w over all classes
    score     = tf(w, c) * idf(w)

A word used by one segment only gets the largest idf it can for its frequency, so it ranks
first there. Stop words (below) are not words at all here: they count in neither ``tf``, ``A``
nor ``f``.

Tokenisation (:func:`tokenize`), for any language that puts spaces between words:

1. Apostrophe look-alikes (``’ ‘ ʼ ´``, the backtick, the full-width ``＇``) become ``'``,
   soft hyphens are removed, the text is lower-cased (``str.lower``: ``ß`` stays ``ß``) and
   NFC-normalised, so composed and decomposed accents (``"é"`` and ``"e"`` + U+0301) give the
   same word.
2. A word is a run of Unicode letters (with their combining marks) and inner apostrophes.
   Digits, hyphens, underscores and punctuation separate words: ``"bem-vindo"`` gives ``bem`` and
   ``vindo``, ``"iphone13"`` gives ``iphone``, a number gives nothing.
3. A French elided article or pronoun (``l' d' j' m' n' s' t' c' qu' jusqu' lorsqu' puisqu'
   quoiqu'``) is dropped: ``"l'été"`` gives ``été``, ``"qu'il"`` gives ``il``. Other inner
   apostrophes stay: ``don't``, ``aujourd'hui``, ``customer's``.
4. Words of one letter are dropped.

Languages written without spaces (Chinese, Japanese, Thai) come out as whole phrases, and
spellings that lower-casing does not merge stay apart (``"GROSSE"`` -> ``grosse``, not
``große``).

Stop words (function words) are dropped in three layers:

- built-in lists for English, Portuguese, Spanish, German and French (``stopwords/<code>.txt``
  beside this module, :data:`STOP_WORDS_BY_LANGUAGE`), chosen with ``stop_languages`` (default
  all five). The union drops a few words that are content words in another of the languages
  (German ``hat``, ``man``, ``war``; French ``car``, ``son``): list only your texts' languages;
- ``extra_stop_words``: the user's own words, e.g. for another language or a brand name;
- from the data (:func:`common_words`): within a source, a word found in at least
  ``common_share`` (default 0.5) of the texts of *every* segment with ``common_min_texts``
  (default 20) texts or more carries no information about any segment and is dropped, and
  logged. Only texts with at least one word left count; the rule needs two such segments.
  At 0.5 a dropped word's rate can differ by at most a factor of 2 between those segments.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from types import MappingProxyType

import numpy as np

from gpuseg.profile.lifts import check_segments
from gpuseg.runtime.errors import UserInputError

log = logging.getLogger(__name__)

#: Languages with a built-in stop list, in the default order of ``stop_languages``.
BUILTIN_LANGUAGES = ("en", "pt", "es", "de", "fr")

#: French elided articles and pronouns, dropped before the stop list ("l'été" -> "été").
ELISIONS = frozenset({"l", "d", "j", "m", "n", "s", "t", "c", "qu", "jusqu", "lorsqu", "puisqu",
                      "quoiqu"})

# Apostrophe look-alikes typed in reviews ("don’t", "don´t", "don`t") -> "'"; soft hyphen removed.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'",
                              "`": "'", "\uff07": "'", "\u00ad": None})


def normalize(text: str) -> str:
    """``text`` as the tokeniser sees it: apostrophes unified, lower case, NFC."""
    return unicodedata.normalize("NFC", text.translate(_APOSTROPHES).lower())


def _char_class(codes: list[int]) -> str:
    """A regex character class body for the code points ``codes`` (sorted), as ranges."""
    parts = []
    for _, run in itertools.groupby(enumerate(codes), lambda ic: ic[1] - ic[0]):
        run = [c for _, c in run]
        lo, hi = run[0], run[-1]
        parts.append(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}")
    return "".join(parts)


@functools.cache
def _patterns() -> tuple[re.Pattern, re.Pattern]:
    """A fast candidate pattern and the exact word pattern; built once, on first use.

    ``re`` has no ``\\p{L}``, and ``\\w`` also takes digits, ``_`` and numerals such as ``²``
    or ``½``, so the exact classes come from :mod:`unicodedata` (planes 0-3 hold every letter;
    marks also sit in plane 14). Zero-width (non-)joiners count as marks: Persian and Indic
    words contain them. The exact pattern is slow on whole texts (large classes), so
    :func:`_words` finds candidates with ``\\w`` and re-reads only those that are not plain
    letters and apostrophes.
    """
    letters, marks = [], []
    for code in itertools.chain(range(0x40000), range(0xE0000, 0xE1000)):
        ch = chr(code)
        if ch.isalpha():
            letters.append(code)
        elif unicodedata.category(ch)[0] == "M" or code in (0x200C, 0x200D):
            marks.append(code)
    m = _char_class(marks)
    lm = _char_class(sorted(letters + marks))
    run = rf"\w+(?:[{m}]+\w*)*"
    fast = re.compile(f"{run}(?:'{run})*")
    unit = f"[{_char_class(letters)}][{lm}]*"
    exact = re.compile(f"{unit}(?:'{unit})*")
    return fast, exact


def _words(normalized: str) -> list[str]:
    """Runs of letters (with marks) and inner apostrophes in a normalised text."""
    fast, exact = _patterns()
    out = []
    for word in fast.findall(normalized):
        if word.isalpha() or ("'" in word and word.replace("'", "").isalpha()):
            out.append(word)
        else:  # digits, '_', numerals or combining marks inside
            out.extend(exact.findall(word))
    return out


def _letters(word: str) -> int:
    return sum(ch.isalpha() for ch in word)


def _load_builtin(lang: str) -> frozenset[str]:
    text = resources.files("gpuseg.profile").joinpath(f"stopwords/{lang}.txt").read_text("utf-8")
    return frozenset(normalize(w) for line in text.splitlines()
                     if not line.lstrip().startswith("#") for w in line.split())


#: Built-in stop list of each language in :data:`BUILTIN_LANGUAGES` (normalised words).
STOP_WORDS_BY_LANGUAGE: Mapping[str, frozenset[str]] = MappingProxyType(
    {lang: _load_builtin(lang) for lang in BUILTIN_LANGUAGES})

#: The union of the built-in stop lists: the default of :func:`tokenize`.
STOP_WORDS = frozenset().union(*STOP_WORDS_BY_LANGUAGE.values())


def tokenize(text: str | None, stop_words: Iterable[str] = STOP_WORDS) -> list[str]:
    """Word tokens of ``text`` without stop words (None or empty -> []).

    See the module docstring for the rules. ``stop_words`` must hold normalised words (see
    :func:`normalize` and :func:`stop_words_for`); pass ``()`` to keep every word.
    """
    if text is None or (isinstance(text, str) and not text):
        return []
    if not isinstance(text, str):
        raise UserInputError(f"The 'texts' parameter must hold str or None, got "
                             f"{type(text).__name__} {text!r}.")
    stops = stop_words if isinstance(stop_words, frozenset | set) else set(stop_words)
    out = []
    for word in _words(normalize(text)):
        if "'" in word:
            head, _, rest = word.partition("'")
            if head in ELISIONS:
                word = rest
        if (len(word) < 2 or not word.isalpha() and _letters(word) < 2) or word in stops:
            continue
        out.append(word)
    return out


def _yaml_hint(value) -> str:
    if isinstance(value, bool):
        return " In YAML, quote words such as no, yes, on, off: 'no'."
    return ""


def stop_words_for(languages: Iterable[str] | str | None = None,
                   extra: Iterable[str] | str = ()) -> frozenset[str]:
    """The stop words of the built-in ``languages`` (None: all) plus the ``extra`` words.

    Parameters
    ----------
    languages : iterable of str, or str, optional
        Codes from :data:`BUILTIN_LANGUAGES`, case-insensitive; a region is ignored
        (``pt-BR`` -> ``pt``). None: all of them; empty: none.
    extra : iterable of str, or str
        More words, in any case and Unicode form; each must be one word as :func:`tokenize`
        reads it.

    Returns
    -------
    frozenset of str
        Normalised words, as :func:`tokenize` compares them.
    """
    if languages is None:
        languages = BUILTIN_LANGUAGES
    elif isinstance(languages, str):
        languages = [languages]
    stops: set[str] = set()
    for lang in languages:
        code = lang.strip().lower().replace("_", "-").split("-")[0] if isinstance(lang, str) else None
        if code not in STOP_WORDS_BY_LANGUAGE:
            raise UserInputError(
                f"The 'stop_languages' parameter has {lang!r}, which has no built-in stop list; "
                f"built-in: {', '.join(sorted(BUILTIN_LANGUAGES))}. List that language's function "
                f"words in 'extra_stop_words' instead.{_yaml_hint(lang)}")
        stops |= STOP_WORDS_BY_LANGUAGE[code]
    for word in [extra] if isinstance(extra, str) else extra:
        got = tokenize(word, ()) if isinstance(word, str) else None
        if got is None or got != [normalize(word)]:
            raise UserInputError(
                f"The 'extra_stop_words' parameter has {word!r}, which the tokeniser reads as "
                f"{got!r}; give single words of two letters or more (letters and inner "
                f"apostrophes, no elided l'/d'/qu').{_yaml_hint(word)}")
        stops.add(got[0])
    return frozenset(stops)


def common_words(doc_freq: Sequence[Mapping[str, int]], n_texts: Sequence[int], *,
                 common_share: float | None = 0.5, common_min_texts: int = 20) -> dict[str, float]:
    """Words found in at least ``common_share`` of the texts of every segment big enough.

    A segment is big enough with ``common_min_texts`` texts or more; the rule needs two such
    segments (with fewer, or ``common_share=None``, nothing is common).

    Parameters
    ----------
    doc_freq : sequence of mapping
        Per segment, word -> number of that segment's texts containing it.
    n_texts : sequence of int
        Per segment, the number of texts (with at least one word).
    common_share : float in (0, 1], or None
    common_min_texts : int >= 1

    Returns
    -------
    dict
        ``word -> smallest share`` over the big-enough segments, for the common words.
    """
    if common_share is None:
        return {}
    big = [s for s, n in enumerate(n_texts) if n >= common_min_texts]
    if len(big) < 2:
        return {}
    first = min(big, key=lambda s: len(doc_freq[s]))
    out = {}
    for word in doc_freq[first]:
        share = min(doc_freq[s].get(word, 0) / n_texts[s] for s in big)
        if share >= common_share:
            out[word] = share
    return out


def _check_options(top_n, min_df, common_share, common_min_texts) -> None:
    if isinstance(top_n, bool) or not isinstance(top_n, int | np.integer) or top_n < 1:
        raise UserInputError(f"The 'top_n' parameter must be an int >= 1, got {top_n!r}.")
    if isinstance(min_df, bool) or not isinstance(min_df, int | np.integer) or min_df < 1:
        raise UserInputError(f"The 'min_df' parameter must be an int >= 1, got {min_df!r}.")
    if common_share is not None and (isinstance(common_share, bool)
                                     or not isinstance(common_share, int | float | np.number)
                                     or not 0 < common_share <= 1):
        raise UserInputError(f"The 'common_share' parameter must be a float in (0, 1] or None "
                             f"(off), got {common_share!r}.")
    if (isinstance(common_min_texts, bool) or not isinstance(common_min_texts, int | np.integer)
            or common_min_texts < 1):
        raise UserInputError(f"The 'common_min_texts' parameter must be an int >= 1, got "
                             f"{common_min_texts!r}.")


def _stops(stop_words, stop_languages, extra_stop_words) -> frozenset[str]:
    if stop_words is None:
        return stop_words_for(stop_languages, extra_stop_words)
    if stop_languages is not None:
        raise UserInputError("Give either the 'stop_words' parameter (the whole list) or "
                             "'stop_languages' (built-in lists), not both.")
    return frozenset(normalize(w) for w in stop_words) | stop_words_for((), extra_stop_words)


def _segment_count(seg: np.ndarray, n_segments: int | None) -> int:
    k = (int(seg.max()) + 1 if seg.size else 0) if n_segments is None else int(n_segments)
    if seg.size and seg.max() >= k:
        raise UserInputError(f"The 'n_segments' parameter must exceed every label; got {k} and "
                             f"label {int(seg.max())}.")
    return k


def _distinctive(texts, seg: np.ndarray, k: int, *, top_n: int, min_df: int,
                 stops: frozenset[str], common_share: float | None, common_min_texts: int,
                 label: str = "") -> dict[int, list[tuple[str, float]]]:
    per_class = [Counter() for _ in range(k)]
    seg_df = [Counter() for _ in range(k)]
    n_texts = [0] * k
    for text, s in zip(texts, seg.tolist(), strict=True):
        tokens = tokenize(text, stops)
        if tokens:
            per_class[s].update(tokens)
            seg_df[s].update(set(tokens))
            n_texts[s] += 1
    common = common_words(seg_df, n_texts, common_share=common_share,
                          common_min_texts=common_min_texts)
    if common:
        n_big = sum(n >= common_min_texts for n in n_texts)
        ranked = sorted(common, key=lambda w: (-common[w], w))
        log.info("Distinctive words%s: dropped %d word(s) found in at least %.0f%% of the texts of "
                 "each of the %d segments with %d texts or more: %s%s", label, len(ranked),
                 100 * common_share, n_big, common_min_texts, ", ".join(ranked[:30]),
                 ", ..." if len(ranked) > 30 else "")
        log.debug("Distinctive words%s: common words and their smallest share: %s", label,
                  ", ".join(f"{w} {common[w]:.2f}" for w in ranked))
        for c in itertools.chain(per_class, seg_df):
            for w in common:
                c.pop(w, None)
    df: Counter = Counter()
    for c in seg_df:
        df.update(c)
    vocab = {w for w, n in df.items() if n >= min_df}
    totals = [sum(c.values()) for c in per_class]  # all words, the tf denominator
    freq: Counter = Counter()
    for c in per_class:
        freq.update({w: n for w, n in c.items() if w in vocab})
    classes_with_text = [t for t in totals if t > 0]
    avg = float(np.mean(classes_with_text)) if classes_with_text else 0.0
    out: dict[int, list[tuple[str, float]]] = {}
    for s in range(k):
        if totals[s] == 0:
            out[s] = []
            continue
        scored = [(w, (n / totals[s]) * math.log(1.0 + avg / freq[w]))
                  for w, n in per_class[s].items() if w in vocab]
        scored.sort(key=lambda ws: (-ws[1], ws[0]))
        out[s] = [(w, round(float(sc), 8)) for w, sc in scored[:top_n]]
    return out


def distinctive_words(texts: Sequence[str | None], text_segments, n_segments: int | None = None, *,
                      top_n: int = 10, min_df: int = 2,
                      stop_words: Iterable[str] | None = None,
                      stop_languages: Iterable[str] | str | None = None,
                      extra_stop_words: Iterable[str] | str = (),
                      common_share: float | None = 0.5,
                      common_min_texts: int = 20) -> dict[int, list[tuple[str, float]]]:
    """The ``top_n`` most distinctive words of each segment's texts by c-TF-IDF.

    Parameters
    ----------
    texts : sequence of str or None
        One text per row; None or empty (e.g. a rating-only review) is skipped.
    text_segments : array of int, shape (n_texts,)
        Segment of the customer who wrote each text.
    n_segments : int, optional
        Number of segments (default: largest label + 1); segments without texts get [].
    top_n : int, default 10
        Words kept per segment.
    min_df : int, default 2
        Words found in fewer texts (over all segments) are ignored: one-off typos and names.
    stop_languages : iterable of str, or str, optional
        Built-in stop lists to use, from :data:`BUILTIN_LANGUAGES` (``en pt es de fr``);
        None (default): all five; ``[]``: none.
    extra_stop_words : iterable of str, default ()
        More words to drop, in any case or Unicode form (e.g. another language's function
        words, a brand name); each must be a single word as :func:`tokenize` reads it.
    common_share : float in (0, 1] or None, default 0.5
        Drop (and log at INFO) a word found in at least this share of the texts of every
        segment with ``common_min_texts`` texts or more, when there are two such segments or
        more; see :func:`common_words`. None turns the rule off.
    common_min_texts : int, default 20
        Segments with fewer texts (with at least one word) do not take part in that rule.
    stop_words : iterable of str, optional
        The whole stop list, replacing the built-in ones (cannot be combined with
        ``stop_languages``; ``extra_stop_words`` still apply); ``()`` keeps every word.

    Returns
    -------
    dict
        ``segment -> [(word, score), ...]`` by decreasing score (ties: alphabetical).
    """
    _check_options(top_n, min_df, common_share, common_min_texts)
    seg = check_segments(text_segments, len(texts), name="text_segments")
    k = _segment_count(seg, n_segments)
    stops = _stops(stop_words, stop_languages, extra_stop_words)
    return _distinctive(texts, seg, k, top_n=int(top_n), min_df=int(min_df), stops=stops,
                        common_share=common_share, common_min_texts=int(common_min_texts))


def distinctive_words_by_source(texts: Sequence[str | None], sources: Sequence[str | None],
                                text_segments, n_segments: int | None = None, *,
                                top_n: int = 10, min_df: int = 2,
                                stop_words: Iterable[str] | None = None,
                                stop_languages: Iterable[str] | str | None = None,
                                extra_stop_words: Iterable[str] | str = (),
                                common_share: float | None = 0.5,
                                common_min_texts: int = 20,
                                ) -> dict[str, dict[int, list[tuple[str, float]]]]:
    """:func:`distinctive_words` separately for each text source (``review``, ``ticket``, ...).

    The comparison is within a source: a segment's tickets against the other segments' tickets,
    and the ``common_share`` rule looks at one source's texts at a time.

    Parameters
    ----------
    texts : sequence of str or None
        One text per row; None or empty (e.g. a rating-only review) is skipped.
    sources : sequence of str or None
        The source of each text; rows without one are skipped.
    text_segments, n_segments, top_n, min_df, stop_languages, extra_stop_words, common_share, \
common_min_texts, stop_words
        As in :func:`distinctive_words`, applied to each source's texts.

    Returns
    -------
    dict
        ``source -> segment -> [(word, score), ...]``, sources in alphabetical order.
    """
    _check_options(top_n, min_df, common_share, common_min_texts)
    seg = check_segments(text_segments, len(texts), name="text_segments")
    if len(sources) != len(texts):
        raise UserInputError(f"The 'sources' parameter has {len(sources)} entries but 'texts' has "
                             f"{len(texts)}; they must be aligned.")
    k = _segment_count(seg, n_segments)
    stops = _stops(stop_words, stop_languages, extra_stop_words)
    src = np.asarray([s if s is not None else "" for s in sources], dtype=object)
    out = {}
    for name in sorted({s for s in src.tolist() if s}):
        rows = np.flatnonzero(src == name)
        out[name] = _distinctive([texts[i] for i in rows], seg[rows], k, top_n=int(top_n),
                                 min_df=int(min_df), stops=stops, common_share=common_share,
                                 common_min_texts=int(common_min_texts), label=f" ({name})")
    return out
