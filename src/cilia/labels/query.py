"""kubectl's `-l SELECTOR` syntax, parsed into a `LabelSelector` (the one matcher).

Equality-based `k=v`, `k==v`, `k!=v` and set-based `k in (a,b)`, `k notin (a,b)`,
`k` (exists) and `!k` (does not exist), joined by commas (every requirement must
hold). As in Kubernetes, `k!=v` and `k notin (...)` also match objects without `k`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cilia.labels.errors import ValidationError
from cilia.labels.label import SOURCE_K8S, Labels
from cilia.labels.selector import LabelSelector, Operator
from cilia.labels.syntax import key_error, value_error

_KEY = r"[^\s=!(),]+"
_EXISTS = re.compile(rf"^(?P<neg>!)?\s*(?P<key>{_KEY})$")
_EQUALITY = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>[^\s=!(),]*)$")
_SET = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def _split(text: str) -> list[str]:
    """The requirements: commas outside parentheses separate them."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ValidationError("", f"unbalanced ')' in label selector {text!r}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if depth:
        raise ValidationError("", f"unbalanced '(' in label selector {text!r}")
    parts.append(current)
    return [p.strip() for p in parts]


def _key(key: str) -> str:
    if error := key_error(key):
        raise ValidationError("", error)
    return key


def _value(value: str) -> str:
    if error := value_error(value):
        raise ValidationError("", error)
    return value


def parse_selector(text: str) -> LabelSelector:
    """`-l` text -> selector; the empty text selects everything. Raises ValidationError
    naming the requirement it cannot read."""
    if not text.strip():
        return LabelSelector()
    expressions: list[tuple[str, Operator, list[str]]] = []
    for part in _split(text):
        if m := _SET.match(part):
            values = [_value(v.strip()) for v in m["values"].split(",")]
            if not m["values"].strip():
                raise ValidationError("", f"{part!r}: the set of values cannot be empty")
            op: Operator = "In" if m["op"] == "in" else "NotIn"
            expressions.append((_key(m["key"]), op, values))
        elif m := _EQUALITY.match(part):
            op = "NotIn" if m["op"] == "!=" else "In"
            expressions.append((_key(m["key"]), op, [_value(m["value"])]))
        elif m := _EXISTS.match(part):
            op = "DoesNotExist" if m["neg"] else "Exists"
            expressions.append((_key(m["key"]), op, []))
        else:
            raise ValidationError("", f"cannot parse label selector requirement {part!r}")
    return LabelSelector(match_expressions=expressions)


def selects(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """Whether an object's `metadata.labels` satisfy the selector."""
    return selector.is_empty or selector.matches(Labels.from_dict(labels, SOURCE_K8S))
