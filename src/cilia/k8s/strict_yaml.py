"""Strict decoding of YAML and JSON documents (manifests, policy files, API bodies).

Refused, with a message naming the source, the document and the problem: bytes that
are not UTF-8, NUL characters (raw or escaped), duplicate mapping keys, aliases
(`*name`; so no alias expansion), nesting deeper than a limit, tags other than the
JSON types (`!!binary`, `!!set`, `!!python/...`, custom tags), non-finite numbers and
integers too long to convert. As Kubernetes reads YAML through JSON, timestamps stay
strings and `<<` and `=` are plain keys and values.

Only PyYAML and the standard library are imported here (no pydantic), so the `cilia`
command can use it for `policy import` without paying for the agent's stack.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
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


class _StrictConstructor(SafeConstructor):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        "found an unhashable key",
                        key_node.start_mark,
                    ) from None
                if first is not None:
                    line = first.start_mark.line + 1
                    raise _Refused(
                        problem=f"duplicate key {key!r} (first at line {line})",
                        problem_mark=key_node.start_mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)

    def _other_tag(self, node: Node) -> None:
        raise _Refused(
            problem=f"tag {node.tag!r} is not allowed (only the JSON types)",
            problem_mark=node.start_mark,
        )

    def _str(self, node: ScalarNode) -> str:
        value = self.construct_scalar(node)
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
            return int(super().construct_yaml_int(node))
        except ValueError:
            raise _Refused(problem="integer too long", problem_mark=node.start_mark) from None

    def _float(self, node: ScalarNode) -> float:
        value = float(super().construct_yaml_float(node))
        if not math.isfinite(value):
            raise _Refused(
                problem="not a finite number (JSON has no NaN or infinity)",
                problem_mark=node.start_mark,
            )
        return value


_StrictConstructor.yaml_constructors = {
    "tag:yaml.org,2002:null": SafeConstructor.construct_yaml_null,
    "tag:yaml.org,2002:bool": SafeConstructor.construct_yaml_bool,
    "tag:yaml.org,2002:int": _StrictConstructor._int,
    "tag:yaml.org,2002:float": _StrictConstructor._float,
    "tag:yaml.org,2002:str": _StrictConstructor._str,
    "tag:yaml.org,2002:seq": SafeConstructor.construct_yaml_seq,
    "tag:yaml.org,2002:map": SafeConstructor.construct_yaml_map,
    None: _StrictConstructor._other_tag,
}
_StrictConstructor.yaml_multi_constructors = {}


def _mark(event: yaml.Event) -> yaml.Mark | None:
    mark: Any = event.start_mark  # libyaml's marks have the same line and column
    return cast("yaml.Mark | None", mark)


class _StrictComposer(yaml.composer.Composer):
    max_depth: int
    depth: int

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[attr-defined]  # the parser's
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(
                problem=f"alias *{event.anchor} is not allowed (no anchors or aliases)",
                problem_mark=_mark(event),
            )
        nested = isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent)
        if nested:
            self.depth += 1
            if self.depth > self.max_depth:
                raise _Refused(
                    problem=f"nested deeper than {self.max_depth} levels",
                    problem_mark=_mark(event),
                )
        try:
            return super().compose_node(parent, index)
        finally:
            if nested:
                self.depth -= 1


class _StrictLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    _StrictComposer,
    _StrictConstructor,
    _StrictResolver,
):
    """Pure Python: used when PyYAML was built without libyaml."""

    def __init__(self, text: str, max_depth: int) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _StrictComposer.__init__(self)
        _StrictConstructor.__init__(self)
        _StrictResolver.__init__(self)
        self.max_depth = max_depth
        self.depth = 0


_Loader: Callable[[str, int], _StrictComposer] = _StrictLoader

if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _FastStrictLoader(_StrictComposer, CParser, _StrictConstructor, _StrictResolver):
        """libyaml scans and parses (about five times faster, and without recursion);
        nodes are composed and constructed in Python, with the checks above."""

        def __init__(self, text: str, max_depth: int) -> None:
            CParser.__init__(self, text)
            _StrictComposer.__init__(self)
            _StrictConstructor.__init__(self)
            _StrictResolver.__init__(self)
            self.max_depth = max_depth
            self.depth = 0

    _Loader = _FastStrictLoader


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
        return _load_all(_Loader, text, source, max_depth, max_documents, counted)
    except _SurrogateEscape:
        # libyaml refuses every "\\ud83d" escape, even in a pair as JSON writes
        # characters beyond the BMP; the Python parser reads them (pairs are joined).
        return _load_all(_StrictLoader, text, source, max_depth, max_documents, counted)


class _SurrogateEscape(Exception):
    pass


def _load_all(
    loader_class: Callable[[str, int], _StrictComposer],
    text: str,
    source: str,
    max_depth: int,
    max_documents: int | None,
    counted: int,
) -> list[Any]:
    docs: list[Any] = []
    count = counted
    loader: Any = None
    try:
        loader = loader_class(text, max_depth)
        while loader.check_data():
            doc = loader.get_data()
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
        if loader_class is not _StrictLoader and "Unicode character escape" in problem:
            raise _SurrogateEscape from None
        raise ManifestError(
            source, f"invalid YAML: {_yaml_reason(err, text)}", len(docs) + 1
        ) from None
    except (ValueError, TypeError, RecursionError) as err:
        if isinstance(err, ManifestError):
            raise
        raise ManifestError(source, f"invalid YAML: {err}", len(docs) + 1) from None
    finally:
        if loader is not None:
            loader.dispose()
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
