"""Filtered search: a small expression language over item attributes, parsed (never ``eval``-ed) into a mask.

Syntax (one ``--where`` each; several are joined by ``and``)::

    price < 30 and rating >= 4
    store in ["Verdusa", "HUHOT"] or not (category contains "women")
    rating_number >= 100 and color = 'red'

A comparison is ``FIELD OP VALUE`` with OP one of ``< <= > >= = == !=``, ``FIELD in [V, ...]`` or
``FIELD contains "text"``; comparisons combine with ``and``, ``or``, ``not`` and parentheses. Numbers compare
numerically, strings by equality without regard to case (``contains``: a case-insensitive substring).
``brand`` is another name for ``store``. Fields other than the item's own (item_id, group_id, title, store,
category, price, rating, rating_number) are read from its metadata (a BEIR corpus line's ``metadata``). An item
that lacks a field matches no comparison on it (as SQL's NULL), so ``not (price < 30)`` keeps items without a price.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from densesearch.core.errors import BadInput

MAX_FILTER_CHARS = 2000
MAX_DEPTH = 32
OWN_FIELDS = ("item_id", "group_id", "title", "store", "category", "price", "rating", "rating_number")
ALIASES = {"brand": "store"}
ORDER_OPS = ("<", "<=", ">", ">=")
_TOKEN_RE = re.compile(r"""\s*(?:
    (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'[^']*')
  | (?P<op><=|>=|==|!=|<|>|=)
  | (?P<punct>[()\[\],])
  | (?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)
)""", re.VERBOSE)
HINT = 'e.g. --where \'price < 30 and rating >= 4\' or --where \'store in ["Verdusa", "HUHOT"]\''

Value = float | str


class FilterError(BadInput):
    """A filter that does not parse or cannot apply, with where and why."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"filter {text!r}: {reason}", hint=HINT)


@dataclass(frozen=True)
class Compare:
    field: str
    op: str
    value: Value


@dataclass(frozen=True)
class Member:
    field: str
    values: tuple[Value, ...]


@dataclass(frozen=True)
class Contains:
    field: str
    text: str


@dataclass(frozen=True)
class Not:
    part: Node


@dataclass(frozen=True)
class Both:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Either:
    parts: tuple[Node, ...]


Node = Compare | Member | Contains | Not | Both | Either


@dataclass
class _Tokens:
    """The tokens of one expression and a cursor over them."""

    text: str
    items: list[tuple[str, str]]
    at: int = 0

    @classmethod
    def of(cls, text: str) -> _Tokens:
        items, position = [], 0
        while position < len(text):
            if not text[position:].strip():
                break
            match = _TOKEN_RE.match(text, position)
            if not match or match.end() == position:
                raise FilterError(text, f"cannot read {text[position:].strip()[:20]!r}")
            items.append((match.lastgroup or "", match.group(match.lastgroup or 0)))
            position = match.end()
        return cls(text, items)

    def peek(self) -> tuple[str, str]:
        return self.items[self.at] if self.at < len(self.items) else ("end", "")

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.at += 1
        return token

    def word(self, *words: str) -> bool:
        """Consume the next token when it is one of the keywords ``words``."""
        kind, value = self.peek()
        if kind == "name" and value.lower() in words:
            self.at += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if self.take()[1] != value:
            raise self.error(f"expected {value!r}")

    def error(self, reason: str) -> FilterError:
        kind, value = self.items[self.at - 1] if 0 < self.at <= len(self.items) else ("end", "")
        return FilterError(self.text, f"{reason} (at {value!r})" if kind != "end" else f"{reason} (at its end)")


def parse_filter(text: str) -> Node:
    """One expression as a tree; a one-line FilterError names what is wrong."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(text[:40] + "...", f"is {len(text):,} characters long (max {MAX_FILTER_CHARS:,})")
    tokens = _Tokens.of(text)
    if not tokens.items:
        raise FilterError(text, "is empty")
    node = _either(tokens, 0)
    if tokens.peek()[0] != "end":
        tokens.take()
        raise tokens.error("unexpected text after a complete filter")
    return node


def _either(tokens: _Tokens, depth: int) -> Node:
    parts = [_both(tokens, depth)]
    while tokens.word("or"):
        parts.append(_both(tokens, depth))
    return parts[0] if len(parts) == 1 else Either(tuple(parts))


def _both(tokens: _Tokens, depth: int) -> Node:
    parts = [_unary(tokens, depth)]
    while tokens.word("and"):
        parts.append(_unary(tokens, depth))
    return parts[0] if len(parts) == 1 else Both(tuple(parts))


def _unary(tokens: _Tokens, depth: int) -> Node:
    if depth > MAX_DEPTH:
        raise tokens.error(f"nests deeper than {MAX_DEPTH}")
    if tokens.word("not"):
        return Not(_unary(tokens, depth + 1))
    if tokens.peek() == ("punct", "("):
        tokens.take()
        node = _either(tokens, depth + 1)
        tokens.expect(")")
        return node
    return _comparison(tokens)


def _comparison(tokens: _Tokens) -> Node:
    kind, name = tokens.take()
    if kind != "name" or name.lower() in ("and", "or", "not", "in", "contains"):
        raise tokens.error("expected a field name")
    name = ALIASES.get(name, name)
    if tokens.word("in"):
        return Member(name, _list(tokens))
    if tokens.word("contains"):
        text = _value(tokens)
        if not isinstance(text, str):
            raise tokens.error("contains takes a quoted string")
        return Contains(name, text.casefold())
    kind, op = tokens.take()
    if kind != "op":
        raise tokens.error(f"expected <, <=, >, >=, =, !=, in or contains after {name!r}")
    value = _value(tokens)
    if op in ORDER_OPS and isinstance(value, str):
        raise tokens.error(f"{op} compares numbers; a string compares with =, !=, in or contains")
    return Compare(name, "=" if op == "==" else op, value)


def _list(tokens: _Tokens) -> tuple[Value, ...]:
    tokens.expect("[")
    values = [_value(tokens)]
    while tokens.peek() == ("punct", ","):
        tokens.take()
        values.append(_value(tokens))
    tokens.expect("]")
    return tuple(values)


def _value(tokens: _Tokens) -> Value:
    kind, text = tokens.take()
    if kind == "number":
        number = float(text)
        if not math.isfinite(number):
            raise tokens.error("numbers must be finite")
        return number
    if kind == "string":
        return _unquote(tokens, text)
    raise tokens.error("expected a number or a quoted string")


def _unquote(tokens: _Tokens, text: str) -> str:
    if text.startswith("'"):
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError as exc:
        raise tokens.error("a double-quoted string takes JSON escapes only") from exc


@dataclass
class StringColumn:
    """A text attribute factorised: one code per item (-1: missing) and the distinct values, casefolded."""

    codes: np.ndarray
    values: list[str]

    @classmethod
    def of(cls, raw: Sequence[object]) -> StringColumn:
        index: dict[str, int] = {}
        codes = np.full(len(raw), -1, dtype=np.int32)
        for row, value in enumerate(raw):
            if isinstance(value, str) and value:
                codes[row] = index.setdefault(value.casefold(), len(index))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                codes[row] = index.setdefault(_number_text(float(value)), len(index))
        return cls(codes, list(index))

    def matching(self, wanted: set[str]) -> np.ndarray:
        found = [code for code, value in enumerate(self.values) if value in wanted]
        return np.isin(self.codes, np.asarray(found, dtype=np.int32))

    def containing(self, text: str) -> np.ndarray:
        return np.isin(self.codes, np.asarray([c for c, v in enumerate(self.values) if text in v], dtype=np.int32))


def _field(row: dict, name: str) -> object:
    value = row.get(name) if name in OWN_FIELDS else None
    if value is None or value == "":
        meta = row.get("meta") or {}
        value = meta.get(name)
        if value is None and isinstance(meta.get("metadata"), dict):
            value = meta["metadata"].get(name)
    return value


def _number_text(number: float) -> str:
    return str(int(number)) if number.is_integer() else str(number)


def _as_number(value: object) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else math.nan
    try:
        return float(str(value).strip().lstrip("$").replace(",", ""))
    except ValueError:
        return math.nan


@dataclass
class Attributes:
    """The items' filterable attributes, each column built on its first use (strings factorised, numbers NaN
    where missing) and kept for the next query."""

    items: Sequence[dict]
    numbers: dict[str, np.ndarray] = field(default_factory=dict)
    strings: dict[str, StringColumn] = field(default_factory=dict)

    def raw(self, name: str) -> list[object]:
        """Each item's value of ``name``: its own field, else its metadata's (a BEIR line's extra keys, or the keys
        of its ``metadata`` object)."""
        return [_field(row, name) for row in self.items]

    def number(self, name: str) -> np.ndarray:
        if name not in self.numbers:
            self.numbers[name] = np.asarray([_as_number(v) for v in self.raw(name)], dtype=np.float64)
        return self.numbers[name]

    def string(self, name: str) -> StringColumn:
        if name not in self.strings:
            self.strings[name] = StringColumn.of(self.raw(name))
        return self.strings[name]

    def known(self, name: str) -> bool:
        """Whether any item has the field (a filter on a field no item has is a typo, or a field this catalog
        lacks: refused by name rather than matching nothing)."""
        return bool(np.any(self.string(name).codes >= 0))


def evaluate(node: Node, table: Attributes) -> np.ndarray:
    """The items ``node`` keeps, as a boolean mask over the index's rows."""
    if isinstance(node, Both):
        return np.logical_and.reduce([evaluate(part, table) for part in node.parts])
    if isinstance(node, Either):
        return np.logical_or.reduce([evaluate(part, table) for part in node.parts])
    if isinstance(node, Not):
        return ~evaluate(node.part, table)
    if isinstance(node, Contains):
        return table.string(node.field).containing(node.text)
    if isinstance(node, Member):
        return _member(table, node.field, node.values)
    return _compare(table, node)


def _member(table: Attributes, name: str, values: tuple[Value, ...]) -> np.ndarray:
    numbers = [v for v in values if isinstance(v, float)]
    mask = table.string(name).matching({v.casefold() for v in values if isinstance(v, str)}
                                       | {_number_text(v) for v in numbers})
    if numbers:
        mask |= np.isin(table.number(name), numbers)
    return mask


def _compare(table: Attributes, node: Compare) -> np.ndarray:
    if isinstance(node.value, str):
        column = table.string(node.field)
        equal = column.matching({node.value.casefold()})
        return equal if node.op == "=" else ~equal & (column.codes >= 0)
    column = table.number(node.field)
    with np.errstate(invalid="ignore"):
        if node.op == "!=":
            return (column != node.value) & ~np.isnan(column)
        return {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                "=": np.equal}[node.op](column, node.value)


def fields_of(node: Node) -> set[str]:
    if isinstance(node, (Both, Either)):
        return set().union(*(fields_of(part) for part in node.parts))
    if isinstance(node, Not):
        return fields_of(node.part)
    return {node.field}


@dataclass(frozen=True)
class Allowed:
    """The rows a query may return (a filter's mask and the live rows), with FAISS's bitmap of them."""

    mask: np.ndarray

    @cached_property
    def count(self) -> int:
        return int(np.count_nonzero(self.mask))

    @cached_property
    def rows(self) -> np.ndarray:
        return np.flatnonzero(self.mask)

    @cached_property
    def bitmap(self) -> np.ndarray:
        """One bit per row, least significant first: FAISS's ``IDSelectorBitmap`` layout."""
        return np.packbits(self.mask, bitorder="little")

    @property
    def share(self) -> float:
        return self.count / max(len(self.mask), 1)


def where_mask(expressions: Sequence[str], table: Attributes) -> np.ndarray | None:
    """The rows every expression keeps (None when there is none); a field no item has is refused by name."""
    if not expressions:
        return None
    masks = []
    for text in expressions:
        node = parse_filter(text)
        unknown = sorted(name for name in fields_of(node) if not table.known(name))
        if unknown:
            raise FilterError(text, f"no item has the field {unknown[0]!r}; fields: {', '.join(OWN_FIELDS)} "
                                    "or a metadata key")
        masks.append(evaluate(node, table))
    return np.logical_and.reduce(masks)
