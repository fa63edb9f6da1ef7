"""Properties of manifest parsing, label validation and rule parsing (hypothesis).

Whatever the input, `parse_manifests` returns objects or raises ManifestError and
`parse_rules` returns rules or raises ValidationError; what is accepted survives a
round trip. Example counts come from the profile (tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from cilia.k8s.manifests import (
    KINDS,
    InputLimits,
    ManifestError,
    dump,
    label_key_error,
    label_value_error,
    parse_manifest,
    parse_manifests,
)
from cilia.k8s.strict_yaml import load_documents, load_json
from cilia.policy import ValidationError, parse_rules

EXAMPLES = sorted(Path(__file__).parents[2].glob("examples/**/*.yaml"))
LIMITS = InputLimits(max_depth=16, max_objects=20, max_rules=8, max_labels=8)

# Text a JSON document can carry: no NUL, no lone surrogates.
clean_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(clean_text, inner, max_size=4),
    max_leaves=20,
)

names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z") | st.text(max_size=12)
label_names = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?\Z")
label_keys = (
    label_names
    | st.builds(
        lambda p, n: f"{p}/{n}",
        st.from_regex(r"\A[a-z0-9]([-a-z0-9.]{0,8}[a-z0-9])?\Z"),
        label_names,
    )
    | st.text(max_size=12)
)
label_values = label_names | st.just("") | st.text(max_size=8)
labels = st.dictionaries(label_keys, label_values, max_size=10)
selectors = st.fixed_dictionaries({}, optional={"matchLabels": labels}) | json_values
ports = st.integers(-1, 70000) | st.text(max_size=4)
rules = st.fixed_dictionaries(
    {"endpointSelector": selectors},
    optional={
        "ingress": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "fromEndpoints": st.lists(selectors, max_size=2),
                    "fromCIDR": st.lists(st.sampled_from(["10.0.0.0/8", "1.2.3.4", "x"])),
                    "toPorts": st.lists(
                        st.fixed_dictionaries(
                            {"ports": st.lists(st.fixed_dictionaries({"port": ports}), max_size=2)}
                        ),
                        max_size=2,
                    ),
                },
            ),
            max_size=2,
        ),
        "egress": st.lists(json_values, max_size=2),
        "labels": st.lists(st.text(max_size=10), max_size=3),
    },
)
specs = {
    "Namespace": st.just({}),
    "Pod": st.fixed_dictionaries(
        {
            "containers": st.lists(
                st.fixed_dictionaries(
                    {"name": names},
                    optional={
                        "command": st.lists(clean_text, max_size=2),
                        "ports": st.lists(
                            st.fixed_dictionaries({"containerPort": ports}), max_size=2
                        ),
                    },
                ),
                max_size=2,
            )
        },
        optional={"serviceAccountName": names},
    ),
    "NetworkPolicy": st.fixed_dictionaries(
        {"podSelector": selectors}, optional={"ingress": st.lists(json_values, max_size=2)}
    ),
    "CiliumNetworkPolicy": rules,
    "Service": st.fixed_dictionaries({}, optional={"selector": labels}),
    "Endpoints": st.just({}),
}


@st.composite
def manifests(draw: st.DrawFn) -> Any:
    """Documents shaped like the supported kinds, valid or slightly off."""
    kind = draw(st.sampled_from([*KINDS, "Deployment"]))
    version = KINDS.get(kind, ("apps/v1",))[0]
    doc: dict[str, Any] = {
        "apiVersion": draw(st.just(version) | st.sampled_from(["v1", "cilium.io/v2"])),
        "kind": kind,
        "metadata": draw(
            st.fixed_dictionaries({"name": names}, optional={"namespace": names, "labels": labels})
        ),
    }
    if kind in specs and kind != "Endpoints":
        doc["spec"] = draw(specs[kind])
    if kind == "CiliumNetworkPolicy" and draw(st.booleans()):
        doc["specs"] = draw(st.lists(rules, max_size=3))
    if draw(st.integers(0, 9)) == 0:  # now and then, junk anywhere
        doc[draw(st.sampled_from(["spec", "metadata", "extra"]))] = draw(json_values)
    return doc


def _parse(data: bytes | str) -> list[Any]:
    """parse_manifests, allowing only its documented error."""
    try:
        return list(parse_manifests(data, "fuzz.yaml", LIMITS))
    except ManifestError as err:
        assert str(err).startswith("fuzz.yaml: ")
        return []


@given(st.binary(max_size=400) | st.text(max_size=400))
def test_any_input_is_parsed_or_refused(data: bytes | str) -> None:
    _parse(data)


@given(st.sampled_from(EXAMPLES) if EXAMPLES else st.nothing(), st.data())
def test_mutated_examples_are_parsed_or_refused(path: Path, data: st.DataObject) -> None:
    text = path.read_text()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        insert = data.draw(st.text(string.printable + "\x00\ufeff&*!{}[]:-", max_size=6))
        text = text[:at] + insert + text[at + cut :]
    _parse(text)


@given(st.lists(manifests(), min_size=1, max_size=3), st.booleans())
def test_generated_manifests_round_trip(docs: list[Any], as_json: bool) -> None:
    text = "\n---\n".join(json.dumps(d) for d in docs) if as_json else yaml.safe_dump_all(docs)
    for obj in _parse(text):
        again = parse_manifest(json.loads(json.dumps(dump(obj))))
        assert again == obj


@given(json_values)
def test_strict_loaders_read_what_json_and_yaml_write(value: Any) -> None:
    assume(_depth(value) <= 16)
    assert load_json(json.dumps(value), "v", max_depth=16) == value
    assert load_documents(yaml.safe_dump(value), "v", max_depth=16) == [value]


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _kubernetes_key(key: str) -> bool:
    """The Kubernetes rule (IsQualifiedName), written independently of the code."""
    parts = key.split("/")
    if len(parts) == 1:
        prefix, name = None, parts[0]
    elif len(parts) == 2:
        prefix, name = parts
    else:
        return False
    if prefix is not None and not (0 < len(prefix) <= 253 and _SUBDOMAIN.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_NAME.fullmatch(name))


@given(label_keys | st.text(string.ascii_letters + string.digits + "-_./", max_size=80))
def test_label_keys_follow_kubernetes(key: str) -> None:
    assert (label_key_error(key) is None) == _kubernetes_key(key)


@given(label_values | st.text(string.ascii_letters + "-_.", max_size=70))
def test_label_values_follow_kubernetes(value: str) -> None:
    ok = value == "" or (len(value) <= 63 and bool(_NAME.fullmatch(value)))
    assert (label_value_error(value) is None) == ok


@given(json_values | st.lists(rules, max_size=10) | rules)
def test_rules_are_parsed_or_refused(value: Any) -> None:
    try:
        parsed = parse_rules(value, max_rules=LIMITS.max_rules)
    except ValidationError:
        return
    assert parse_rules([r.to_dict() for r in parsed]) == parsed
