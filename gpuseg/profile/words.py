"""Distinctive words per segment with class-based TF-IDF (c-TF-IDF, as in BERTopic).

All texts of a segment are one "class document". For word ``w`` and class ``c``::

    tf(w, c)  = count(w, c) / total words in c          (so big segments do not dominate)
    idf(w)    = log(1 + A / f(w))                       A = mean words per class,
                                                        f(w) = count of w over all classes
    score     = tf(w, c) * idf(w)

A word used by one segment only gets the largest idf it can for its frequency, so it ranks
first there. Tokenisation is deliberately simple (lower case, letters and inner apostrophes,
two characters or more) and a small built-in English stop list drops function words.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from gpuseg.profile.lifts import check_segments
from gpuseg.runtime.errors import UserInputError

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[a-z][a-z']*[a-z]")

#: A small English stop list (function words, pronouns, auxiliaries, a few retail fillers).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are aren't as at be because been before being
below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't
down during each few for from further get got had hadn't has hasn't have haven't having he her here
hers herself him himself his how i i'm i've if in into is isn't it it's its itself just let's me
more most much my myself no nor not now of off on once only or other our ours ourselves out over
own same she should shouldn't so some such than that that's the their theirs them themselves then
there there's these they they're this those through to too under until up very was wasn't we we're
were weren't what when where which while who whom why will with won't would wouldn't you you're
your yours yourself yourselves also still even really one two ll ve re
""".split())


def tokenize(text: str | None, stop_words: Iterable[str] = STOP_WORDS) -> list[str]:
    """Lower-cased word tokens of ``text`` without stop words (None -> [])."""
    if not text:
        return []
    stops = stop_words if isinstance(stop_words, frozenset | set) else set(stop_words)
    return [t for t in _TOKEN.findall(text.lower()) if t not in stops]


def distinctive_words(texts: Sequence[str | None], text_segments, n_segments: int | None = None, *,
                      top_n: int = 10, min_df: int = 2,
                      stop_words: Iterable[str] | None = None) -> dict[int, list[tuple[str, float]]]:
    """The ``top_n`` most distinctive words of each segment's texts by c-TF-IDF.

    Parameters
    ----------
    texts : sequence of str
        One text per row (None or empty allowed).
    text_segments : array of int, shape (n_texts,)
        Segment of the customer who wrote each text.
    n_segments : int, optional
        Number of segments (default: largest label + 1); segments without texts get [].
    top_n : int, default 10
    min_df : int, default 2
        Words found in fewer texts (over all segments) are ignored: one-off typos and names.
    stop_words : iterable of str, optional
        Words to drop (default :data:`STOP_WORDS`; pass ``()`` to keep every word).

    Returns
    -------
    dict
        ``segment -> [(word, score), ...]`` by decreasing score (ties: alphabetical).
    """
    if not isinstance(top_n, int | np.integer) or top_n < 1:
        raise UserInputError(f"The 'top_n' parameter must be an int >= 1, got {top_n!r}.")
    if not isinstance(min_df, int | np.integer) or min_df < 1:
        raise UserInputError(f"The 'min_df' parameter must be an int >= 1, got {min_df!r}.")
    seg = check_segments(text_segments, len(texts), name="text_segments")
    k = (int(seg.max()) + 1 if seg.size else 0) if n_segments is None else int(n_segments)
    if seg.size and seg.max() >= k:
        raise UserInputError(f"The 'n_segments' parameter must exceed every label; got {k} and "
                             f"label {int(seg.max())}.")
    stops = frozenset(STOP_WORDS if stop_words is None else stop_words)
    per_class = [Counter() for _ in range(k)]
    df: Counter = Counter()
    for text, s in zip(texts, seg.tolist(), strict=True):
        tokens = tokenize(text, stops)
        if tokens:
            per_class[s].update(tokens)
            df.update(set(tokens))
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


def distinctive_words_by_source(texts: Sequence[str | None], sources: Sequence[str | None],
                                text_segments, n_segments: int | None = None,
                                **kwargs) -> dict[str, dict[int, list[tuple[str, float]]]]:
    """:func:`distinctive_words` separately for each text source (``review``, ``ticket``, ...).

    The comparison is within a source: a segment's tickets against the other segments' tickets.
    Extra keyword arguments go to :func:`distinctive_words`.
    """
    seg = check_segments(text_segments, len(texts), name="text_segments")
    if len(sources) != len(texts):
        raise UserInputError(f"The 'sources' parameter has {len(sources)} entries but 'texts' has "
                             f"{len(texts)}; they must be aligned.")
    k = (int(seg.max()) + 1 if seg.size else 0) if n_segments is None else int(n_segments)
    src = np.asarray([s if s is not None else "" for s in sources], dtype=object)
    out = {}
    for name in sorted({s for s in src.tolist() if s}):
        rows = np.flatnonzero(src == name)
        out[name] = distinctive_words([texts[i] for i in rows], seg[rows], k, **kwargs)
    return out
