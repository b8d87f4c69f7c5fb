"""The Compute list `filter` language, compiled to a predicate over a resource dict. Pure."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

from lib.localcloud.compute.exceptions import (
    InvalidValue,
)

_TOKEN_RX = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|(!=|=|:|~|!~)|([^\s()=!:~"]+))')


def compile_filter(text: str | None) -> Callable[[dict[str, Any]], bool]:
    """Compute list `filter`: `field = value`, `!=`, `:` (has), `eq`/`ne` (regex); AND/OR/NOT, space, parens.

    Fields are dotted paths into the resource (labels.env, scheduling.provisioningModel); a URL field
    matches its last segment (zone = us-central1-a); `=` accepts `*` wildcards.
    """
    if not text or not text.strip():
        return lambda _r: True
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RX.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise InvalidValue(f"Invalid value for field 'filter': '{text}'. Invalid list filter expression.")
        pos = m.end()
        if m.group(1):
            tokens.append(("(", "("))
        elif m.group(2):
            tokens.append((")", ")"))
        elif m.group(3) is not None:
            tokens.append(("str", re.sub(r"\\(.)", r"\1", m.group(3))))
        elif m.group(4):
            tokens.append(("op", m.group(4)))
        else:
            word = m.group(5)
            tokens.append(("op", word) if word in ("eq", "ne") else ("word", word))
    parser = _FilterParser(tokens, text)
    fn = parser.expr()
    if parser.i != len(tokens):
        raise InvalidValue(f"Invalid value for field 'filter': '{text}'. Invalid list filter expression.")
    return fn


class _FilterParser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.t, self.i, self.text = tokens, 0, text

    def bad(self) -> InvalidValue:
        return InvalidValue(f"Invalid value for field 'filter': '{self.text}'. Invalid list filter expression.")

    def peek(self) -> tuple[str, str] | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def expr(self) -> Callable[[dict[str, Any]], bool]:
        terms = [self.conj()]
        while self.peek() == ("word", "OR"):
            self.i += 1
            terms.append(self.conj())
        return terms[0] if len(terms) == 1 else (lambda r: any(f(r) for f in terms))

    def conj(self) -> Callable[[dict[str, Any]], bool]:
        terms = [self.unary()]
        while self.peek() is not None and self.peek() not in ((")", ")"), ("word", "OR")):
            if self.peek() == ("word", "AND"):
                self.i += 1
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else (lambda r: all(f(r) for f in terms))

    def unary(self) -> Callable[[dict[str, Any]], bool]:
        tok = self.peek()
        if tok is None:
            raise self.bad()
        if tok == ("word", "NOT"):
            self.i += 1
            inner = self.unary()
            return lambda r: not inner(r)
        if tok[0] == "(":
            self.i += 1
            inner = self.expr()
            if self.peek() != (")", ")"):
                raise self.bad()
            self.i += 1
            return inner
        if tok[0] != "word" or self.i + 2 >= len(self.t) or self.t[self.i + 1][0] != "op" \
                or self.t[self.i + 2][0] not in ("word", "str"):
            raise self.bad()
        field, op, value = tok[1], self.t[self.i + 1][1], self.t[self.i + 2][1]
        self.i += 3
        return _term(field, op, value)


def _field(resource: dict[str, Any], path: str) -> Any:
    node: Any = resource
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _term(field: str, op: str, value: str) -> Callable[[dict[str, Any]], bool]:
    def matches_one(actual: Any) -> bool:
        text = _as_text(actual)
        candidates = [text] + ([text.rsplit("/", 1)[-1]] if "/" in text else [])
        if op in ("eq", "ne", "~", "!~"):
            return any(re.fullmatch(value, c) for c in candidates)
        if op == ":":
            return value == "*" or any(value in c for c in candidates)
        return any(fnmatch.fnmatchcase(c, value) if "*" in value else c == value for c in candidates)

    def check(resource: dict[str, Any]) -> bool:
        actual = _field(resource, field)
        if actual is None:
            found = False
        elif isinstance(actual, list):
            found = any(matches_one(a) for a in actual)
        else:
            found = matches_one(actual)
        return not found if op in ("!=", "ne", "!~") else found

    return check

