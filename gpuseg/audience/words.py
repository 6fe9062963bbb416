"""Plain words to an audience rule: "high-value customers showing declining engagement".

The request is cut into clauses at connectors (``and``, ``with``, ``who``, ``showing``, commas...).
In each clause, modifier words give the direction and, for some, the group of fields meant:

- high / big / many / most ... -> ``> p<high>``; low / few / small ... -> ``< p<low>``;
- declining / falling / dropping ... -> a ``trend`` field ``< 0``; growing / rising ... -> ``> 0``;
- recent / recently -> a ``recency`` field ``< p<low>``; inactive / dormant / lapsed -> ``> p<high>``;
- new -> a ``tenure`` field ``< p<low>``; long-time / long-standing -> ``> p<high>``;
- at risk / likely to churn -> a ``risk`` field high (``churn_risk == 'high'`` for a low/medium/high tier);
- unhappy / dissatisfied -> a ``rating`` field low; happy / satisfied -> high;
- no / without / never -> ``== 0``; a clause after "with"/"having" about a count -> ``> 0``;
- numbers: "more than 5", "over 1000", "under 30" -> ``> 5`` ...; "top 500 by churn score",
  "the 1000 most valuable" -> ``top 500 by ...``; "segment 3", "segments 1 and 4" -> ``segment in (1, 4)``;
- a value of a text field ("premium plan", "north region") -> ``plan == 'premium'``.

What remains of the clause (its content words, else the modifier's hint) is embedded with the
local text model and compared by cosine similarity with every eligible field's description; the
best field wins when its similarity reaches ``min_score``, else the request is an error that
names the best candidates. Clauses are joined with ``and``. The candidates and their scores are
kept for every condition so that ambiguity can be shown.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gpuseg.audience.fields import Field
from gpuseg.audience.rules import FieldRef, Literal, parse
from gpuseg.features.descriptions import readable_name
from gpuseg.runtime.errors import UserInputError

log = logging.getLogger(__name__)

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Modifier:
    """What a modifier phrase means: a direction, optionally a field group and a concept hint."""

    direction: str          # high | low | up | down | zero
    tag: str | None = None  # only fields with this tag are candidates
    hint: str = ""          # the concept when the clause says nothing else ("recent" -> recency)
    generic: bool = False   # a bare high/low word: overrides another modifier's direction, keeps its group


def _m(words: str, *args, **kwargs) -> dict[str, Modifier]:
    mod = Modifier(*args, **kwargs)
    return {w.strip(): mod for w in words.split(",")}


#: phrase -> meaning; longer phrases are matched first
MODIFIERS: dict[str, Modifier] = {
    **_m("high, higher, highest, top, big, bigger, biggest, heavy, large, largest, many, most, lots of, a lot, "
         "more, above average, strong, best, very", "high", generic=True),
    **_m("low, lower, lowest, small, smaller, smallest, light, few, fewer, little, less, least, below average, "
         "weak, worst, rarely, seldom, hardly", "low", generic=True),
    **_m("infrequent, occasional", "low", hint="purchase frequency, how often they buy"),
    **_m("declining, decline, declined, falling, fell, dropping, dropped, drop, decreasing, decreased, "
         "shrinking, slowing, slowed, fading, waning, cooling, less and less, slipping, reduced", "down", "trend"),
    **_m("growing, grew, increasing, increased, rising, rose, improving, accelerating, more and more, "
         "ramping up, picking up", "up", "trend"),
    **_m("recent, recently, lately, just bought", "low", "recency", "days since the last purchase"),
    **_m("inactive, dormant, lapsed, idle, gone quiet, disengaged, not active, not been active, not seen, went silent, "
         "stopped buying, lost", "high", "recency", "days since the last activity"),
    **_m("new, newly, newest, recently joined, just joined, newcomers, newcomer, first time, recently acquired",
         "low", "tenure", "tenure, how long they have been a customer"),
    **_m("long time, longtime, long standing, veteran, veterans, oldest customers, established, long term",
         "high", "tenure", "tenure, how long they have been a customer"),
    **_m("at risk, churn risk, risk of churn, risk of churning, likely to churn, likely to leave, about to "
         "leave, about to churn, churning, might leave, may leave, could churn, flight risk", "high", "risk",
         "churn risk"),
    **_m("unhappy, dissatisfied, disappointed, angry, unsatisfied, frustrated, bad reviews, poor ratings, "
         "negative reviews, low ratings", "low", "rating", "review rating satisfaction"),
    **_m("happy, satisfied, delighted, positive reviews, good reviews, promoters, fans", "high", "rating",
         "review rating satisfaction"),
    **_m("loyal, repeat, regulars, regular", "high", "count", "number of purchases made, repeat buyers"),
    **_m("older, elderly, senior, seniors", "high", hint="age"),
    **_m("younger, young", "low", hint="age"),
    **_m("outlier, outliers, unusual, atypical, anomalous", "high", "outlier", "outlier flag"),
    **_m("no, none, never, without, zero, not any, nothing", "zero"),
}

_CONNECTORS = re.compile(r",|;|\b(?:and|but|while|who|that|which|whose|with|without|having|showing|plus|"
                         r"where|also)\b")
_HAS = {"with", "having"}
_STOP = set("""a an the of in on at to for from by as is are was were be been being have has had do does did
their they them its it this these those our your my customers customer clients client people users user
buyers shoppers members accounts persons person ones one who whom that which show showing shows
display displaying exhibit exhibiting list find get give me all any some very really quite rather
currently now still so too also just is are""".split())
_NUMBER_OPS = [
    (r"(?:more|greater|higher|bigger|larger|older) than|over|above|exceeding|beyond", ">"),
    (r"at least|no less than|minimum of|min", ">="),
    (r"(?:less|fewer|lower|smaller|younger) than|under|below|beneath", "<"),
    (r"at most|no more than|up to|maximum of|max", "<="),
]
_NUM = r"\$?(\d[\d,]*(?:\.\d+)?)\s*(k|m)?\b"


@dataclass
class Candidate:
    """A field and its similarity to a clause's concept."""

    field: str
    score: float


@dataclass
class Condition:
    """One compiled condition: the words it came from, the field, the direction and the rule part."""

    words: str
    field: str
    direction: str
    rule: str
    concept: str = ""
    candidates: list[Candidate] = field(default_factory=list)


@dataclass
class Compiled:
    """A query compiled to a rule, with every condition's candidates."""

    query: str
    rule: str
    conditions: list[Condition]

    def to_dict(self) -> dict:
        """JSON-ready form (the candidates with their scores show any ambiguity)."""
        return {"query": self.query, "rule": self.rule,
                "conditions": [{"words": c.words, "field": c.field, "direction": c.direction, "rule": c.rule,
                                "concept": c.concept,
                                "candidates": [{"field": k.field, "score": round(k.score, 4)} for k in c.candidates]}
                               for c in self.conditions]}


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # high-value -> high value
    return re.sub(r"\s+", " ", text).strip()


def _number(raw: str, suffix: str | None) -> float:
    value = float(raw.replace(",", ""))
    return value * {"k": 1e3, "m": 1e6}.get(suffix or "", 1.0)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _lit(value: str) -> str:
    return str(Literal(value, 0))


def _ref(name: str) -> str:
    return str(FieldRef(name, 0))


class QueryCompiler:
    """Compile plain-language requests against a set of fields with a local text model.

    Parameters
    ----------
    fields : mapping of str to Field
        The fields a rule may use (with their descriptions).
    embed : callable
        ``list[str] -> (n, d)`` L2-normalised vectors (e.g. ``TextEmbedder.encode``).
    high, low : float
        Percentiles that "high" and "low" words mean (80 and 20: the top and bottom fifth).
    min_score : float
        Least cosine similarity between a concept and a field's description to use that field.
    n_candidates : int
        Candidates kept per condition (shown in the log and the JSON).
    key : str
        Config key named in errors.
    """

    def __init__(self, fields: Mapping[str, Field], embed: Embed, *, high: float = 80, low: float = 20,
                 min_score: float = 0.3, n_candidates: int = 3, key: str = "audience.query"):
        if not fields:
            raise UserInputError("there are no fields to match the request against: run `gpuseg features` "
                                 "(and segment/profile) first", config_key=key)
        self.fields = dict(fields)
        self.embed = embed
        self.high, self.low = float(high), float(low)
        self.min_score, self.n_candidates, self.key = float(min_score), int(n_candidates), key
        self.names = list(self.fields)
        texts = [f"{readable_name(n)}: {f.description}" for n, f in self.fields.items()]
        self.vectors = np.asarray(embed(texts), dtype=np.float32)
        self._phrases = sorted(MODIFIERS, key=len, reverse=True)

    # -- public -----------------------------------------------------------------------------------

    def compile(self, query: str) -> Compiled:
        """Compile ``query`` to a rule; a request that matches no field well is an error.

        Returns
        -------
        Compiled
            The rule (parsed back once, so it is valid), and each condition with its candidates.
        """
        if not isinstance(query, str) or not query.strip():
            raise UserInputError("the request is empty: describe the audience in words, e.g. "
                                 "audience.query=\"high-value customers showing declining engagement\"",
                                 config_key=self.key)
        text = _normalise(query)
        conditions: list[Condition] = []
        text = self._segments(text, conditions)
        text = self._values(text, conditions)
        pieces = self._clauses(text)
        for connector, clause in pieces:
            cond = self._clause(clause, connector)
            if cond is not None:
                conditions.append(cond)
        if not conditions:
            raise UserInputError(f"nothing in the request {query!r} names something to select on (a score, a "
                                 "feature or an attribute); say what to look at, e.g. 'customers with a high churn "
                                 "risk', or write a rule in audience.rule", config_key=self.key)
        rule = " and ".join(c.rule if " or " not in c.rule else f"({c.rule})" for c in conditions)
        parse(rule, key=self.key)  # the compiler only writes valid rules; this keeps it honest
        return Compiled(query, rule, conditions)

    # -- pieces -----------------------------------------------------------------------------------

    def _segments(self, text: str, out: list[Condition]) -> str:
        pattern = re.compile(r"\b(macro )?segments? (\d+(?:\s*(?:,|or|and|&)\s*\d+)*)\b")

        def repl(m: re.Match) -> str:
            name = "macro_segment" if m.group(1) else "segment"
            if name not in self.fields:
                return m.group(0)
            numbers = [int(x) for x in re.findall(r"\d+", m.group(2))]
            rule = f"{name} == {numbers[0]}" if len(numbers) == 1 else \
                f"{name} in ({', '.join(map(str, numbers))})"
            out.append(Condition(m.group(0), name, "equals", rule))
            return " , "
        return pattern.sub(repl, text)

    def _values(self, text: str, out: list[Condition]) -> str:
        """Values of text fields named in the request ("premium plan", "north or south region")."""
        for name, fld in self.fields.items():
            if fld.kind != "text" or not fld.values:
                continue
            hits = []
            for value in fld.values:
                low = _normalise(value)
                if len(low) < 2 or low in MODIFIERS or low in _STOP:
                    continue  # "high" is a modifier, not churn_risk's tier, unless written as a rule
                pattern = re.compile(rf"\b{re.escape(low)}\b")
                if pattern.search(text):
                    hits.append((value, pattern))
            if not hits:
                continue
            words = []
            for _value, pattern in hits:
                words.append(pattern.search(text).group(0))
                text = pattern.sub(" ", text)
            own = re.compile(rf"\b{re.escape(readable_name(name))}s?\b")
            text = own.sub(" ", text)
            text = re.sub(r"\b(?:or|and)\s+(?=(?:\s|,)*(?:,|$))", " ", text)  # "north or south" left "or"
            values = [v for v, _ in hits]
            rule = f"{_ref(name)} == {_lit(values[0])}" if len(values) == 1 else \
                f"{_ref(name)} in ({', '.join(_lit(v) for v in values)})"
            out.append(Condition(" / ".join(words), name, "equals", rule))
        return text

    def _clauses(self, text: str) -> list[tuple[str, str]]:
        """(connector before it, clause) pairs; "less and less" and "more and more" stay whole."""
        protected = text.replace("less and less", "less_and_less").replace("more and more", "more_and_more")
        out, start, connector = [], 0, ""
        for m in _CONNECTORS.finditer(protected):
            out.append((connector, protected[start:m.start()]))
            connector, start = m.group(0).strip(), m.end()
        out.append((connector, protected[start:]))
        return [(c, s.replace("less_and_less", "less and less").replace("more_and_more", "more and more").strip())
                for c, s in out if s.strip()]

    def _clause(self, clause: str, connector: str) -> Condition | None:
        words = clause
        direction, tag, hint, explicit = None, None, "", None
        top, comparison = self._top(clause), None
        if top is not None:
            clause = top[2]
        else:
            comparison, clause = self._comparison(clause)
        for phrase in self._phrases:
            pattern = re.compile(rf"(?<![a-z]){re.escape(phrase)}(?![a-z])")
            if not pattern.search(clause):
                continue
            mod = MODIFIERS[phrase]
            clause = pattern.sub(" ", clause)
            if mod.generic:
                explicit = explicit or mod.direction
                continue
            if direction is None:
                direction, tag, hint = mod.direction, mod.tag, mod.hint
        said = direction is not None or explicit is not None
        if connector == "without":
            direction = "zero"
        if direction not in ("up", "down", "zero"):
            # "low churn risk": the bare word sets the direction, "churn risk" the group of fields
            direction = explicit or direction or ("nonzero" if connector in _HAS else "high")
        content = " ".join(w for w in re.findall(r"[a-z0-9_']+", clause) if w not in _STOP and not w.isdigit())
        if comparison is not None and not content and not hint:
            hint = "age"  # "customers over 60", "people under 30"
        concept = f"{content} {hint}".strip()  # the hint sharpens the choice within its group
        if not concept:
            if said:
                log.warning("audience words: %r says a direction but not what it applies to: ignored", words)
            return None
        if top is not None:
            direction = "low" if top[0] else "high"
        elif comparison is not None:
            direction = "high" if comparison[0].startswith(">") else "low"
        candidates = self._candidates(concept, direction, tag, numeric=top is not None or comparison is not None)
        if not candidates or candidates[0].score < self.min_score:
            best = ", ".join(f"{c.field} ({c.score:.2f})" for c in candidates[:self.n_candidates]) or "none"
            raise UserInputError(f"no field matches {words.strip()!r} well enough (best: {best}; a field needs a "
                                 f"similarity of at least {self.min_score:g}, audience.words.min_score): say it "
                                 "differently or write the rule in audience.rule", config_key=self.key)
        best = self.fields[candidates[0].field]
        if direction == "nonzero" and "count" not in best.tags and best.kind == "number" and not best.flag:
            direction = "high"  # "with a high value" was handled above; "with value" means a high one
        rule = self._rule(best, direction, top, comparison)
        return Condition(words.strip(), best.name, direction, rule, concept, candidates[:self.n_candidates])

    def _top(self, clause: str) -> tuple[bool, str, str] | None:
        """("top 500 by churn score" | "the 1000 most valuable") -> (bottom?, "500" or "10%", rest)."""
        m = re.search(rf"\b(top|bottom|best|worst|highest|lowest)\s+{_NUM}\s*(%|percent)?(?:\s+(?:customers?|"
                      rf"clients?|people|users|buyers))?(?:\s+(?:by|in|on|for|of))?", clause)
        if m:
            n = _number(m.group(2), m.group(3))
            return (m.group(1) in ("bottom", "worst", "lowest"), _fmt(n) + ("%" if m.group(4) else ""),
                    clause[:m.start()] + " " + clause[m.end():])
        m = re.search(rf"\b{_NUM}\s*(%|percent)?\s+(most|least|highest|lowest)\b", clause)
        if m:
            n = _number(m.group(1), m.group(2))
            return (m.group(4) in ("least", "lowest"), _fmt(n) + ("%" if m.group(3) else ""),
                    clause[:m.start()] + " " + clause[m.end():])
        return None

    def _comparison(self, clause: str) -> tuple[tuple[str, float] | None, str]:
        for words, op in _NUMBER_OPS:
            m = re.search(rf"\b(?:{words})\s+{_NUM}", clause)
            if m:
                value = _number(m.group(1), m.group(2))
                rest = clause[:m.start()] + " " + clause[m.end():]
                if re.search(r"\b(?:older|younger)\b", m.group(0)):
                    rest += " age"
                return (op, value), rest
        return None, clause

    def _eligible(self, direction: str, tag: str | None, numeric: bool) -> list[str]:
        names = []
        for name, f in self.fields.items():
            if tag is not None and tag not in f.tags:
                continue
            if "category" in f.tags and direction != "equals":
                continue  # "high segment" means nothing
            if numeric and (f.kind != "number" or f.flag):
                continue
            if f.kind == "text" and not {"low", "high"} <= {v.lower() for v in f.values}:
                continue  # a text field is matched by its values, a low/medium/high tier by direction
            if direction in ("up", "down") and f.kind != "number":
                continue
            names.append(name)
        return names

    def _candidates(self, concept: str, direction: str, tag: str | None, *, numeric: bool) -> list[Candidate]:
        eligible = self._eligible(direction, tag, numeric)
        if not eligible:
            return []
        query = np.asarray(self.embed([concept]), dtype=np.float32)[0]
        rows = [self.names.index(n) for n in eligible]
        scores = self.vectors[rows] @ query
        order = np.argsort(-scores, kind="stable")
        return [Candidate(eligible[i], float(scores[i])) for i in order]

    def _rule(self, f: Field, direction: str, top, comparison) -> str:
        ref = _ref(f.name)
        if top is not None:
            bottom, n, _ = top
            return f"{'bottom' if bottom else 'top'} {n} by {ref}"
        if comparison is not None:
            op, value = comparison
            return f"{ref} {op} {_fmt(value)}"
        if f.kind == "bool":
            return ref if direction in ("high", "nonzero", "up") else f"not {ref}"
        if f.kind == "text":  # a low/medium/high tier
            tier = {v.lower(): v for v in f.values}
            return f"{ref} == {_lit(tier['low' if direction in ('low', 'zero', 'down') else 'high'])}"
        if f.flag:
            return f"{ref} == {0 if direction in ('low', 'zero') else 1}"
        return {"high": f"{ref} > p{_fmt(self.high)}", "low": f"{ref} < p{_fmt(self.low)}",
                "up": f"{ref} > 0", "down": f"{ref} < 0", "zero": f"{ref} == 0",
                "nonzero": f"{ref} > 0"}[direction]


def compile_query(query: str, fields: Mapping[str, Field], embed: Embed, **kwargs) -> Compiled:
    """Compile one plain-language request; see :class:`QueryCompiler` for the parameters."""
    return QueryCompiler(fields, embed, **kwargs).compile(query)


def describe_candidates(compiled: Compiled) -> Sequence[str]:
    """Log lines: each condition, the field chosen and the runners-up with their scores."""
    lines = []
    for c in compiled.conditions:
        others = ", ".join(f"{k.field} {k.score:.2f}" for k in c.candidates)
        lines.append(f"{c.words!r} -> {c.rule}" + (f"   (candidates: {others})" if others else ""))
    return lines
