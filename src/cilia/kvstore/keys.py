"""Where cluster identities live in etcd, and how a label set becomes part of a key.

Layout (the reference's, under `cilia/`):

- `cilia/state/identities/v1/id/<id>` -> the encoded labels (master key, no lease);
- `cilia/state/identities/v1/value/<labels>/<node>` -> `<id>` in decimal (one per node
  that references the identity, under that node's lease).

`<labels>` is `source:key=value;` for every label, in the sorted order of `Labels`
(e.g. `k8s:app=web;k8s:io.kubernetes.pod.namespace=default;`), which is the reference's
format. To keep it unambiguous whatever the labels hold, `%`, `/`, `;`, `:`, `=`,
spaces and non-printable characters inside a source, key or value are percent-encoded
(UTF-8): a `/` can then only end the labels and a `;` only end a label, so
`value/<labels>/` is exactly one label set's node keys and decoding is the inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from cilia.labels import Label, Labels

IDENTITIES_PREFIX = "cilia/state/identities/v1/"

_ESCAPED = frozenset("%/;:=")


def _escape(text: str) -> str:
    return "".join(
        quote(c, safe="") if c in _ESCAPED or not c.isprintable() or c.isspace() else c
        for c in text
    )


def encode_labels(labels: Labels) -> str:
    """The canonical key form of a label set (see the module docstring)."""
    return "".join(f"{_escape(lb.source)}:{_escape(lb.key)}={_escape(lb.value)};" for lb in labels)


def decode_labels(text: str) -> Labels:
    """The label set of `encode_labels` output; ValueError if `text` is not one."""
    if text and not text.endswith(";"):
        raise ValueError(f"encoded labels must end with ';': {text!r}")
    out: list[Label] = []
    for part in text.split(";")[:-1]:
        source, colon, rest = part.partition(":")
        key, equals, value = rest.partition("=")
        if not colon or not equals or not key:
            raise ValueError(f"invalid encoded label {part!r}")
        out.append(Label(unquote(source), unquote(key), unquote(value)))
    return Labels(out)


@dataclass(frozen=True)
class IdentityKeys:
    """The identity keys under `base` (tests use a private base)."""

    base: str = IDENTITIES_PREFIX

    @property
    def id_prefix(self) -> str:
        return f"{self.base}id/"

    @property
    def value_prefix(self) -> str:
        return f"{self.base}value/"

    def master(self, identity: int) -> str:
        return f"{self.id_prefix}{identity}"

    def references(self, encoded: str) -> str:
        """The prefix of every node's reference to one label set."""
        return f"{self.value_prefix}{encoded}/"

    def reference(self, encoded: str, node: str) -> str:
        return f"{self.references(encoded)}{node}"

    def parse_master(self, key: str) -> int | None:
        """The id of a master key, or None for anything else."""
        tail = key.removeprefix(self.id_prefix)
        if tail == key or not (tail.isascii() and tail.isdigit()):
            return None
        return int(tail)

    def parse_reference(self, key: str) -> tuple[str, str] | None:
        """(encoded labels, node) of a node's reference key, or None."""
        tail = key.removeprefix(self.value_prefix)
        if tail == key or "/" not in tail:
            return None
        encoded, _, node = tail.rpartition("/")
        return encoded, node
