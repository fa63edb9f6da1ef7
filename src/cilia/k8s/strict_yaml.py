"""Strict decoding of YAML and JSON documents (manifests, policy files, API bodies).

Refused, with a message naming the source, the document and the problem: bytes that
are not UTF-8, NUL characters (raw or escaped), duplicate mapping keys, aliases
(`*name`; so no alias expansion), nesting deeper than a limit, tags other than the
JSON types (`!!binary`, `!!set`, `!!python/...`, custom tags), non-finite numbers and
integers too long to convert. As Kubernetes reads YAML through JSON, timestamps stay
strings and `<<` and `=` are plain keys and values.

Values are built straight from the parser's events (libyaml's when PyYAML has it),
without PyYAML's node tree, which costs some 400 bytes per scalar: memory stays near
the size of the result.

Pure (no I/O); only PyYAML and the standard library are imported here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_OBJECTS = 1000
DEFAULT_MAX_RULES = 1000
DEFAULT_MAX_LABELS = 64


@dataclass(frozen=True)
class InputLimits:
    """Bounds on one input (a request or a file); the agent sets them from its config."""

    max_depth: int = DEFAULT_MAX_DEPTH
    """Nesting of mappings and lists in one document."""
    max_objects: int = DEFAULT_MAX_OBJECTS
    """Objects (non-empty documents) in one request, over all its files."""
    max_rules: int = DEFAULT_MAX_RULES
    """Rules of one CiliumNetworkPolicy (`spec` + `specs`) or one policy import."""
    max_labels: int = DEFAULT_MAX_LABELS
    """Entries of one object's `metadata.labels` (and of a Service's selector)."""


DEFAULT_LIMITS = InputLimits()


class ManifestError(ValueError):
    """A refused manifest file; the message names source, document, object, field and reason."""

    def __init__(
        self, source: str, reason: str, document: int | None = None, obj: str = "", path: str = ""
    ) -> None:
        where = source
        if document is not None:
            where += f": document {document}" + (f" ({obj})" if obj else "")
        super().__init__(f"{where}: {path}: {reason}" if path else f"{where}: {reason}")
        self.source = source
        self.document = document
        self.path = path
        self.reason = reason


def _position(text: str, index: int) -> str:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"line {line}, column {column}"


def decode_text(data: bytes | str, source: str) -> str:
    """`data` as text: UTF-8 (strictly) without NUL characters or lone surrogates."""
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as err:
            raise ManifestError(source, f"not valid UTF-8 (byte {err.start})") from None
    else:
        text = data
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ManifestError(
                source, f"not valid UTF-8 (lone surrogate at character {err.start})"
            ) from None
    if (nul := text.find("\x00")) >= 0:
        raise ManifestError(source, f"NUL character at {_position(text, nul)}")
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(yaml.MarkedYAMLError):
    """Something the strict loader does not accept, at a position of the input."""


_DROPPED_RESOLVERS = {
    "tag:yaml.org,2002:timestamp",  # Kubernetes reads YAML as JSON: dates stay strings
    "tag:yaml.org,2002:merge",  # `<<` is a plain key (merging needs aliases anyway)
    "tag:yaml.org,2002:value",  # `=` is a plain string
}


class _StrictResolver(Resolver):
    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED_RESOLVERS]
        for first, resolvers in Resolver.yaml_implicit_resolvers.items()
    }


def _mark(event: Any) -> yaml.Mark | None:
    mark: Any = event.start_mark  # libyaml's marks have the same line and column
    return cast("yaml.Mark | None", mark)


class _Scalars(SafeConstructor):
    """Turns one scalar into a value: the JSON types only, strictly."""

    def __init__(self) -> None:
        super().__init__()
        self.by_tag: dict[str, Callable[[ScalarNode], Any]] = {
            "tag:yaml.org,2002:null": self.construct_yaml_null,
            "tag:yaml.org,2002:bool": self.construct_yaml_bool,
            "tag:yaml.org,2002:int": self._int,
            "tag:yaml.org,2002:float": self._float,
            "tag:yaml.org,2002:str": self._str,
        }

    def _str(self, node: ScalarNode) -> str:
        value = str(node.value)
        if "\x00" in value:
            raise _Refused(problem="NUL character in a string", problem_mark=node.start_mark)
        if _SURROGATE.search(value):
            # "\ud83d\ude00" escapes (as JSON writes them) are one character; a lone
            # surrogate is not text.
            try:
                value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError:
                raise _Refused(
                    problem="lone surrogate in a string", problem_mark=node.start_mark
                ) from None
        return value

    def _int(self, node: ScalarNode) -> int:
        try:
            return int(self.construct_yaml_int(node))
        except ValueError:
            raise _Refused(problem="integer too long", problem_mark=node.start_mark) from None

    def _float(self, node: ScalarNode) -> float:
        value = float(self.construct_yaml_float(node))
        if not math.isfinite(value):
            raise _Refused(
                problem="not a finite number (JSON has no NaN or infinity)",
                problem_mark=node.start_mark,
            )
        return value


def _not_allowed(tag: str, event: Any) -> _Refused:
    return _Refused(
        problem=f"tag {tag!r} is not allowed (only the JSON types)", problem_mark=_mark(event)
    )


_NO_KEY = object()
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _Collection:
    """A mapping or list being filled, with (for a mapping) its pending key."""

    __slots__ = ("key", "lines", "value")

    def __init__(self, value: dict[Any, Any] | list[Any]) -> None:
        self.value = value
        self.key: Any = _NO_KEY
        self.lines: dict[Any, int] = {}


def _build_document(events: Any, scalars: _Scalars, max_depth: int) -> Any:
    """The value of the document whose first node event is next, built from the events
    without a node tree (so memory stays near the size of the value) and checked on the
    way: no aliases, no other tags, no duplicate keys, at most `max_depth` levels."""
    stack: list[_Collection] = []
    while True:
        event = events.get_event()
        value: Any
        if isinstance(event, yaml.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = events.resolve(ScalarNode, event.value, event.implicit)
            construct = scalars.by_tag.get(tag)
            if construct is None:
                raise _not_allowed(tag, event)
            value = construct(ScalarNode(tag, event.value, _mark(event), None, event.style))
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            mapping = isinstance(event, yaml.MappingStartEvent)
            tag = event.tag
            if tag is None or tag == "!":
                tag = _MAP if mapping else _SEQ
            if tag != (_MAP if mapping else _SEQ):
                raise _not_allowed(tag, event)
            if len(stack) >= max_depth:
                raise _Refused(
                    problem=f"nested deeper than {max_depth} levels", problem_mark=_mark(event)
                )
            stack.append(_Collection({} if mapping else []))
            continue
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            value = stack.pop().value
        elif isinstance(event, yaml.AliasEvent):
            raise _Refused(
                problem=f"alias *{event.anchor} is not allowed (no anchors or aliases)",
                problem_mark=_mark(event),
            )
        else:
            raise _Refused(problem=f"unexpected {type(event).__name__}", problem_mark=_mark(event))
        if not stack:
            return value
        parent = stack[-1]
        if isinstance(parent.value, list):
            parent.value.append(value)
        elif parent.key is _NO_KEY:
            try:
                first = parent.lines.get(value)
            except TypeError:
                raise _Refused(
                    problem="found an unhashable key", problem_mark=_mark(event)
                ) from None
            if first is not None:
                raise _Refused(
                    problem=f"duplicate key {_shown(value)} (first at line {first})",
                    problem_mark=_mark(event),
                )
            parent.key = value
            mark = _mark(event)
            parent.lines[value] = mark.line + 1 if mark is not None else 0
        else:
            parent.value[parent.key] = value
            parent.key = _NO_KEY


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


class _PythonEvents(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, _StrictResolver):
    """Events from PyYAML's pure-Python parser (used without libyaml, and for input
    libyaml refuses wrongly)."""

    def __init__(self, text: str) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _StrictResolver.__init__(self)


_Events: Callable[[str], Any] = _PythonEvents

if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _LibyamlEvents(CParser, _StrictResolver):
        """Events from libyaml: about five times faster, and without recursion."""

        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _StrictResolver.__init__(self)

    _Events = _LibyamlEvents


def _yaml_reason(err: yaml.YAMLError, text: str) -> str:
    if isinstance(err, yaml.reader.ReaderError):
        return f"unacceptable character #x{err.character:04x} at {_position(text, err.position)}"
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "invalid"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{problem}{where}"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def load_documents(
    data: bytes | str,
    source: str,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_documents: int | None = None,
    counted: int = 0,
) -> list[Any]:
    """Every document of a YAML (or JSON) stream; empty documents are None.

    Raises ManifestError naming `source` and the document; with `max_documents`, stops
    as soon as more than that many non-empty documents (plus `counted`, those of the
    request's earlier files) have been read.
    """
    text = decode_text(data, source)
    try:
        return _load_all(_Events, text, source, max_depth, max_documents, counted)
    except _SurrogateEscape:
        # libyaml refuses every "\\ud83d" escape, even in a pair as JSON writes
        # characters beyond the BMP; the Python parser reads them (pairs are joined).
        return _load_all(_PythonEvents, text, source, max_depth, max_documents, counted)


class _SurrogateEscape(Exception):
    pass


def _load_all(
    events_class: Callable[[str], Any],
    text: str,
    source: str,
    max_depth: int,
    max_documents: int | None,
    counted: int,
) -> list[Any]:
    docs: list[Any] = []
    count = counted
    events: Any = None
    try:
        events = events_class(text)
        scalars = _Scalars()
        events.get_event()  # stream start
        while not events.check_event(yaml.StreamEndEvent):
            events.get_event()  # document start
            doc = _build_document(events, scalars, max_depth)
            events.get_event()  # document end
            docs.append(doc)
            if doc is not None:
                count += 1
                if max_documents is not None and count > max_documents:
                    raise ManifestError(
                        source,
                        f"more than {max_documents} objects in one request "
                        "(limit max_objects_per_request)",
                        len(docs),
                    )
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or ""
        if events_class is not _PythonEvents and "Unicode character escape" in problem:
            raise _SurrogateEscape from None
        raise ManifestError(
            source, f"invalid YAML: {_yaml_reason(err, text)}", len(docs) + 1
        ) from None
    except (ValueError, TypeError, RecursionError) as err:
        if isinstance(err, ManifestError):
            raise
        raise ManifestError(source, f"invalid YAML: {err}", len(docs) + 1) from None
    finally:
        if events is not None:
            events.dispose()
    return docs


def load_document(data: bytes | str, source: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The single document of a YAML or JSON file (None when empty)."""
    docs = load_documents(data, source, max_depth)
    if len(docs) > 1:
        raise ManifestError(source, f"expected one document, found {len(docs)}")
    return docs[0] if docs else None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _non_finite(value: str) -> float:
    raise ValueError(f"{value} is not a number JSON allows")


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value[:32]} is too large a number")
    return number


# A string (to its closing quote, or to the end when unterminated, so that the scan stays
# linear whatever the input) or a bracket.
_DEPTH_CHARS = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)


def _json_depth_exceeds(text: str, max_depth: int) -> bool:
    depth = 0
    for match in _DEPTH_CHARS.finditer(text):
        char = match.group()
        if char in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif char in "]}":
            depth -= 1
    return False


def load_json(data: bytes | str, source: str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """One JSON document, strictly: UTF-8, no NUL (raw or `\\u0000`), no lone surrogates,
    no duplicate keys, no NaN/Infinity, nesting at most `max_depth`."""
    text = decode_text(data, source)
    if _json_depth_exceeds(text, max_depth):
        raise ManifestError(source, f"invalid JSON: nested deeper than {max_depth} levels")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_non_finite,
            parse_float=_finite,
        )
    except json.JSONDecodeError as err:
        raise ManifestError(source, f"invalid JSON: {err}") from None
    except (ValueError, RecursionError) as err:
        raise ManifestError(source, f"invalid JSON: {err}") from None
    # Escapes decode to what the text check could not see: NUL and lone surrogates.
    if "\\u" in text:
        _check_strings(value, source)
    return value


def _check_strings(value: Any, source: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise ManifestError(source, "invalid JSON: NUL character in a string")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ManifestError(source, "invalid JSON: lone surrogate in a string") from None
