"""The audience rule language: a tokenizer, a recursive-descent parser and a vectorised evaluator.

Grammar (keywords in any case)::

    rule       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | atom
    atom       := "(" rule ")"
                | ("top" | "bottom") NUMBER ["%"] "by" FIELD
                | FIELD ("==" | "=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") operand
                | FIELD ["not"] "in" "(" literal ("," literal)* ")"
                | FIELD ["not"] "between" operand "and" operand
                | FIELD "is" ["not"] "null"
                | FIELD                                   (a true/false field, e.g. is_outlier)
    operand    := literal | PERCENTILE | FIELD
    literal    := NUMBER | STRING | "true" | "false"
    PERCENTILE := p0 .. p100 (p99.5 too): that percentile of the compared field over the base
    FIELD      := an identifier, or any column name in `backquotes`
    STRING     := '...' or "..."

Semantics: every base customer is evaluated. Comparisons follow SQL's three-valued logic: a
null (missing, or an undefined NaN statistic) never matches a comparison, nor its negation, and
only ``is null`` finds it. Percentiles and ``top``/``bottom`` are computed over the whole base
(not over the other conditions' result); ``top 5000 by churn_score`` keeps the 5,000 highest
non-null scores, ties broken by row order; ``top 10% by x`` keeps 10% of the customers with a value.
Nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpuseg.runtime.errors import UserInputError

KEYWORDS = {"and", "or", "not", "in", "between", "top", "bottom", "by", "is", "null", "true", "false"}
_COMPARE = {"==": "equal", "=": "equal", "!=": "not_equal", "<>": "not_equal", "<": "less",
            "<=": "less_equal", ">": "greater", ">=": "greater_equal"}
_CANONICAL = {"=": "==", "<>": "!="}

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<quoted>`[^`]+`)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<>|<=|>=|<|>|=)
  | (?P<punct>[(),%-])
""", re.VERBOSE)
_PERCENTILE = re.compile(r"[pP](\d+(?:\.\d+)?)\Z")


@dataclass(frozen=True)
class Token:
    """A piece of the rule: ``kind`` (number, string, field, percentile, keyword, op, punct, end)."""

    kind: str
    value: object
    pos: int
    text: str


def pointer(text: str, pos: int) -> str:
    """``text`` with a caret under character ``pos``."""
    return f"\n  {text}\n  {' ' * pos}^"


def rule_error(message: str, text: str, pos: int, key: str) -> UserInputError:
    """A UserInputError that says where in the rule the problem is."""
    return UserInputError(f"{message} (at position {pos + 1}):{pointer(text, pos)}", config_key=key)


def tokenize(text: str, *, key: str = "audience.rule") -> list[Token]:
    """Split a rule into tokens (ending with an ``end`` token); an unknown character is an error."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise rule_error(f"unexpected character {text[pos]!r} in the rule", text, pos, key)
        kind, raw = m.lastgroup, m.group()
        if kind == "number":
            tokens.append(Token("number", float(raw), pos, raw))
        elif kind == "string":
            body = re.sub(r"\\(.)", r"\1", raw[1:-1])
            tokens.append(Token("string", body, pos, raw))
        elif kind == "quoted":
            tokens.append(Token("field", raw[1:-1], pos, raw))
        elif kind == "name":
            low = raw.lower()
            pct = _PERCENTILE.match(raw)
            if low in KEYWORDS:
                tokens.append(Token("keyword", low, pos, raw))
            elif pct:
                q = float(pct.group(1))
                if q > 100:
                    raise rule_error(f"percentile {raw} is above p100", text, pos, key)
                tokens.append(Token("percentile", q, pos, raw))
            else:
                tokens.append(Token("field", raw, pos, raw))
        elif kind in ("op", "punct"):
            tokens.append(Token(kind, raw, pos, raw))
        pos = m.end()
    tokens.append(Token("end", None, len(text), ""))
    return tokens


# ---- syntax tree --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FieldRef:
    name: str
    pos: int

    def __str__(self) -> str:
        return self.name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name) and \
            self.name.lower() not in KEYWORDS and not _PERCENTILE.match(self.name) else f"`{self.name}`"


@dataclass(frozen=True)
class Literal:
    value: object  # float, str or bool
    pos: int

    def __str__(self) -> str:
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, str):
            return "'" + self.value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return _number(float(self.value))


@dataclass(frozen=True)
class Percentile:
    q: float
    pos: int

    def __str__(self) -> str:
        return f"p{_number(self.q)}"


@dataclass(frozen=True)
class Compare:
    left: object
    op: str
    right: object
    pos: int

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"


@dataclass(frozen=True)
class InList:
    field: FieldRef
    values: tuple[Literal, ...]
    negate: bool

    def __str__(self) -> str:
        return f"{self.field} {'not in' if self.negate else 'in'} ({', '.join(map(str, self.values))})"


@dataclass(frozen=True)
class Between:
    field: FieldRef
    low: object
    high: object
    negate: bool

    def __str__(self) -> str:
        return f"{self.field} {'not between' if self.negate else 'between'} {self.low} and {self.high}"


@dataclass(frozen=True)
class IsNull:
    field: FieldRef
    negate: bool

    def __str__(self) -> str:
        return f"{self.field} is {'not null' if self.negate else 'null'}"


@dataclass(frozen=True)
class Top:
    n: float
    percent: bool
    field: FieldRef
    bottom: bool

    def __str__(self) -> str:
        return f"{'bottom' if self.bottom else 'top'} {_number(self.n)}{'%' if self.percent else ''} by {self.field}"


@dataclass(frozen=True)
class Truth:
    field: FieldRef

    def __str__(self) -> str:
        return str(self.field)


@dataclass(frozen=True)
class Not:
    operand: object

    def __str__(self) -> str:
        return f"not {_wrap(self.operand)}"


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    operands: tuple

    def __str__(self) -> str:
        return f" {self.op} ".join(_wrap(o, self.op) for o in self.operands)


def _wrap(node, parent: str | None = None) -> str:
    if isinstance(node, BoolOp) and node.op != parent:
        return f"({node})"
    return str(node)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


# ---- parser -------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str, key: str):
        self.text, self.key = text, key
        self.tokens = tokenize(text, key=key)
        self.i = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def fail(self, message: str, tok: Token | None = None):
        tok = tok or self.tok
        found = "the end of the rule" if tok.kind == "end" else repr(tok.text)
        raise rule_error(f"syntax error: {message}, found {found}", self.text, tok.pos, self.key)

    def take(self) -> Token:
        tok = self.tok
        self.i += 1
        return tok

    def keyword(self, *words: str) -> bool:
        return self.tok.kind == "keyword" and self.tok.value in words

    def expect_keyword(self, word: str, what: str) -> Token:
        if not self.keyword(word):
            self.fail(f"expected {what}")
        return self.take()

    def parse(self):
        if self.tok.kind == "end":
            self.fail("the rule is empty; expected a condition such as churn_risk == 'high'")
        node = self.or_expr()
        if self.tok.kind != "end":
            self.fail("expected 'and', 'or' or the end of the rule")
        return node

    def or_expr(self):
        parts = [self.and_expr()]
        while self.keyword("or"):
            self.take()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def and_expr(self):
        parts = [self.not_expr()]
        while self.keyword("and"):
            self.take()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def not_expr(self):
        if self.keyword("not"):
            self.take()
            return Not(self.not_expr())
        return self.atom()

    def atom(self):
        tok = self.tok
        if tok.kind == "punct" and tok.value == "(":
            self.take()
            node = self.or_expr()
            if not (self.tok.kind == "punct" and self.tok.value == ")"):
                self.fail(f"expected ')' to close the '(' at position {tok.pos + 1}")
            self.take()
            return node
        if self.keyword("top", "bottom"):
            return self.top()
        if tok.kind != "field":
            self.fail("expected a field name, 'not', 'top', 'bottom' or '('")
        field = FieldRef(str(self.take().value), tok.pos)
        nxt = self.tok
        if nxt.kind == "op":
            self.take()
            return Compare(field, _CANONICAL.get(str(nxt.value), str(nxt.value)), self.operand(), nxt.pos)
        negate = False
        if self.keyword("not"):
            self.take()
            negate = True
            if not self.keyword("in", "between"):
                self.fail("expected 'in' or 'between' after 'not'")
        if self.keyword("in"):
            self.take()
            return InList(field, self.literal_list(), negate)
        if self.keyword("between"):
            self.take()
            low = self.operand()
            self.expect_keyword("and", "'and' between the two bounds of 'between'")
            return Between(field, low, self.operand(), negate)
        if self.keyword("is"):
            self.take()
            neg = False
            if self.keyword("not"):
                self.take()
                neg = True
            self.expect_keyword("null", "'null' after 'is'")
            return IsNull(field, neg)
        return Truth(field)

    def top(self):
        word = self.take()
        if self.tok.kind != "number":
            self.fail(f"expected how many customers after '{word.text}', e.g. {word.text} 5000 by churn_score")
        n_tok = self.take()
        percent = self.tok.kind == "punct" and self.tok.value == "%"
        if percent:
            self.take()
        n = float(n_tok.value)
        if percent and not 0 < n <= 100:
            self.fail("a share must be above 0% and at most 100%", n_tok)
        if not percent and (n < 1 or not n.is_integer()):
            self.fail("a number of customers must be a whole number of at least 1", n_tok)
        self.expect_keyword("by", f"'by' and a field, e.g. {word.text} {n_tok.text} by churn_score")
        if self.tok.kind != "field":
            self.fail("expected the field to rank by")
        ftok = self.take()
        return Top(n, percent, FieldRef(str(ftok.value), ftok.pos), word.value == "bottom")

    def operand(self):
        tok = self.tok
        if tok.kind == "percentile":
            self.take()
            return Percentile(float(tok.value), tok.pos)
        if tok.kind == "field":
            self.take()
            return FieldRef(str(tok.value), tok.pos)
        return self.literal()

    def literal(self) -> Literal:
        tok = self.tok
        if tok.kind == "punct" and tok.value == "-" and self.tokens[self.i + 1].kind == "number":
            self.take()
            return Literal(-float(self.take().value), tok.pos)
        if tok.kind in ("number", "string"):
            self.take()
            return Literal(tok.value, tok.pos)
        if self.keyword("true", "false"):
            self.take()
            return Literal(tok.value == "true", tok.pos)
        self.fail("expected a value (a number, a 'quoted text', true, false, a percentile such as p80 or a field)")

    def literal_list(self) -> tuple[Literal, ...]:
        if not (self.tok.kind == "punct" and self.tok.value == "("):
            self.fail("expected '(' and a list of values, e.g. segment in (1, 3)")
        self.take()
        values = [self.literal()]
        while self.tok.kind == "punct" and self.tok.value == ",":
            self.take()
            values.append(self.literal())
        if not (self.tok.kind == "punct" and self.tok.value == ")"):
            self.fail("expected ',' or ')' in the list of values")
        self.take()
        return tuple(values)


def parse(text: str, *, key: str = "audience.rule"):
    """Parse a rule into its syntax tree; a syntax error names the position and shows it.

    Parameters
    ----------
    text : str
        The rule, e.g. ``churn_risk == 'high' and expected_value > p80``.
    key : str
        The config key named in errors.
    """
    if not isinstance(text, str):
        raise UserInputError(f"the rule must be text, got {type(text).__name__}", config_key=key)
    return _Parser(text, key).parse()


def field_refs(node) -> Iterator[FieldRef]:
    """Every field the rule names, in order of appearance."""
    if isinstance(node, FieldRef):
        yield node
    elif isinstance(node, Compare):
        yield from field_refs(node.left)
        yield from field_refs(node.right)
    elif isinstance(node, InList | IsNull | Truth | Top):
        yield node.field
    elif isinstance(node, Between):
        yield node.field
        yield from field_refs(node.low)
        yield from field_refs(node.high)
    elif isinstance(node, Not):
        yield from field_refs(node.operand)
    elif isinstance(node, BoolOp):
        for o in node.operands:
            yield from field_refs(o)


def fields_used(node) -> list[str]:
    """The distinct field names of a rule, in order of appearance."""
    return list(dict.fromkeys(ref.name for ref in field_refs(node)))


# ---- evaluation ---------------------------------------------------------------------------------

class Evaluator:
    """Evaluate a parsed rule over columns, vectorised: one boolean per customer.

    Parameters
    ----------
    columns : mapping of str to pyarrow.Array
        One array per field, all of the same length (floats without NaN: NaN is a null).
    text : str
        The rule's text, for errors that point into it.
    key : str
        The config key named in errors.
    missing : mapping of str to str, optional
        Field -> the job that writes it, for fields whose job has not run.
    """

    def __init__(self, columns: Mapping[str, pa.Array], text: str, *, key: str = "audience.rule",
                 missing: Mapping[str, str] | None = None):
        self.columns, self.text, self.key = columns, text, key
        self.missing = dict(missing or {})
        self.n = len(next(iter(columns.values()))) if columns else 0

    def check(self, node) -> None:
        """Every field exists: an unknown one is an error suggesting the nearest names."""
        for ref in field_refs(node):
            if ref.name in self.columns:
                continue
            job = self.missing.get(ref.name)
            if job is not None:
                raise rule_error(f"field '{ref.name}' comes from `gpuseg {job}`, which has not run in this work "
                                 f"directory: run `gpuseg {job}` first", self.text, ref.pos, self.key)
            close = difflib.get_close_matches(ref.name, list(self.columns), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
                f"; fields are e.g. {', '.join(sorted(self.columns)[:10])}"
            raise rule_error(f"unknown field '{ref.name}'{hint}", self.text, ref.pos, self.key)

    def mask(self, node) -> np.ndarray:
        """The customers the rule selects, as a boolean array (a null never matches)."""
        self.check(node)
        out = self._eval(node)
        return np.asarray(pc.fill_null(out, False).to_numpy(zero_copy_only=False), dtype=bool)

    def _kind(self, ref: FieldRef) -> str:
        t = self.columns[ref.name].type
        if pa.types.is_boolean(t):
            return "bool"
        return "text" if pa.types.is_string(t) or pa.types.is_large_string(t) else "number"

    def _fail(self, message: str, pos: int):
        raise rule_error(message, self.text, pos, self.key)

    def _eval(self, node) -> pa.Array:
        if isinstance(node, BoolOp):
            combine = pc.and_kleene if node.op == "and" else pc.or_kleene
            out = self._eval(node.operands[0])
            for o in node.operands[1:]:
                out = combine(out, self._eval(o))
            return out
        if isinstance(node, Not):
            return pc.invert(self._eval(node.operand))
        if isinstance(node, Truth):
            if self._kind(node.field) != "bool":
                self._fail(f"field '{node.field.name}' is a {self._kind(node.field)} field, not true/false: compare it, "
                           f"e.g. {node.field} > p80 or {node.field} == 'value'", node.field.pos)
            return self.columns[node.field.name]
        if isinstance(node, IsNull):
            isnull = pc.is_null(self.columns[node.field.name])
            return pc.invert(isnull) if node.negate else isnull
        if isinstance(node, Compare):
            return self._compare(node)
        if isinstance(node, InList):
            kind = self._kind(node.field)
            for v in node.values:
                self._check_literal(node.field, kind, v)
            values = self.columns[node.field.name]
            hit = pc.is_in(values, value_set=pa.array([self._value(kind, v) for v in node.values],
                                                      values.type if kind != "number" else pa.float64()))
            hit = pc.if_else(pc.is_null(values), pa.scalar(None, pa.bool_()), hit)  # a null is never in a list
            return pc.invert(hit) if node.negate else hit
        if isinstance(node, Between):
            low = Compare(node.field, ">=", node.low, node.field.pos)
            high = Compare(node.field, "<=", node.high, node.field.pos)
            inside = pc.and_kleene(self._compare(low), self._compare(high))
            return pc.invert(inside) if node.negate else inside
        if isinstance(node, Top):
            return self._top(node)
        raise TypeError(f"unexpected node {node!r}")  # pragma: no cover - the parser makes no other

    def _check_literal(self, ref: FieldRef, kind: str, lit: Literal) -> None:
        v = lit.value
        ok = (kind == "text" and isinstance(v, str)) or (kind == "bool" and isinstance(v, bool)) or \
            (kind == "number" and isinstance(v, float))
        if not ok:
            shown = self._examples(ref) if kind == "text" else ""
            self._fail(f"field '{ref.name}' is a {kind} field and {lit} is not a {kind} value{shown}", lit.pos)

    def _examples(self, ref: FieldRef) -> str:
        uniq = pc.unique(self.columns[ref.name].drop_null())
        values = sorted(str(v) for v in uniq[:20].to_pylist())
        return f"; its values are e.g. {', '.join(repr(v) for v in values[:8])}" if values else ""

    @staticmethod
    def _value(kind: str, lit: Literal):
        return float(lit.value) if kind == "number" else lit.value

    def _numbers(self, ref: FieldRef) -> np.ndarray:
        col = self.columns[ref.name]
        return np.asarray(pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False),
                          dtype=np.float64)

    def _percentile(self, ref: FieldRef, pct: Percentile) -> float | None:
        if self._kind(ref) != "number":
            self._fail(f"a percentile needs a number field; '{ref.name}' is a {self._kind(ref)} field", pct.pos)
        x = self._numbers(ref)
        x = x[np.isfinite(x)]
        return float(np.percentile(x, pct.q)) if x.size else None

    def _compare(self, node: Compare) -> pa.Array:
        left, op, right = node.left, node.op, node.right
        if not isinstance(left, FieldRef):  # the parser puts a field on the left
            raise TypeError("comparison without a field")  # pragma: no cover
        kind = self._kind(left)
        values = self.columns[left.name]
        if isinstance(right, Percentile):
            threshold = self._percentile(left, right)
            if threshold is None:
                return pa.nulls(len(values), pa.bool_())
            other = pa.scalar(threshold, pa.float64())
        elif isinstance(right, FieldRef):
            if self._kind(right) != kind:
                self._fail(f"cannot compare {kind} field '{left.name}' with {self._kind(right)} field '{right.name}'",
                           right.pos)
            other = self.columns[right.name]
        else:
            self._check_literal(left, kind, right)
            other = pa.scalar(self._value(kind, right), values.type if kind != "number" else pa.float64())
        if kind in ("text", "bool") and op not in ("==", "!="):
            self._fail(f"field '{left.name}' is a {kind} field: only == and != (or in) apply to it, not {op}",
                       node.pos)
        if kind == "number":
            values = values.cast(pa.float64())
            if isinstance(other, pa.Array):
                other = other.cast(pa.float64())
        return getattr(pc, _COMPARE[op])(values, other)

    def _top(self, node: Top) -> pa.Array:
        if self._kind(node.field) != "number":
            self._fail(f"'{node}' needs a number field; '{node.field.name}' is a {self._kind(node.field)} field",
                       node.field.pos)
        x = self._numbers(node.field)
        known = np.isfinite(x)
        n_known = int(known.sum())
        count = math.ceil(n_known * node.n / 100) if node.percent else int(node.n)
        count = min(count, n_known)
        rows = np.flatnonzero(known)
        key = x[rows] if node.bottom else -x[rows]
        chosen = rows[np.argsort(key, kind="stable")[:count]]
        hit = np.zeros(self.n, dtype=bool)
        hit[chosen] = True
        return pa.array(hit, mask=~known)


def evaluate(rule: str, columns: Mapping[str, pa.Array], *, key: str = "audience.rule",
             missing: Mapping[str, str] | None = None) -> tuple[np.ndarray, list[str], str]:
    """Parse and evaluate ``rule`` over ``columns``.

    Parameters
    ----------
    rule : str
        The rule text.
    columns : mapping of str to pyarrow.Array
        The fields, one value per customer.
    key : str
        Config key named in errors.
    missing : mapping, optional
        Field -> job that writes it, for fields whose job has not run (named in the error).

    Returns
    -------
    mask : numpy.ndarray of bool
        The selected customers.
    fields : list of str
        The fields the rule uses.
    canonical : str
        The rule as parsed, written back in one spelling (``=`` as ``==``, keywords lower case).
    """
    tree = parse(rule, key=key)
    return Evaluator(columns, rule, key=key, missing=missing).mask(tree), fields_used(tree), str(tree)
