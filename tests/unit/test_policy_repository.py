"""The policy repository: revisions, deletion by labels, replace, persistence."""

from __future__ import annotations

from cilia.labels import Labels
from cilia.policy import PolicyRepository, Rule, parse_rules


def rules(*label_sets: list[str]) -> list[Rule]:
    return parse_rules(
        [{"endpointSelector": {}, "ingress": [{}], "labels": labels} for labels in label_sets]
    )


def test_revision_bumps() -> None:
    repo = PolicyRepository()
    assert repo.revision == 1
    assert repo.add(rules(["k8s:a=1"])) == 2
    assert repo.add(rules(["k8s:b=1"], ["k8s:b=2"])) == 3
    assert len(repo.rules) == 3


def test_delete_by_labels() -> None:
    repo = PolicyRepository()
    repo.add(rules(["k8s:a=1", "k8s:x=y"], ["k8s:a=1"], ["k8s:a=2"]))
    assert repo.delete_by_labels(Labels.parse(["k8s:a=1", "k8s:x=y"])) == (3, 1)
    assert repo.delete_by_labels(Labels.parse(["k8s:a=9"])) == (3, 0)
    assert repo.delete_by_labels(Labels.parse(["k8s:a=1"])) == (4, 1)
    assert [r.labels.to_list() for r in repo.rules] == [["k8s:a=2"]]


def test_delete_all() -> None:
    repo = PolicyRepository()
    repo.add(rules(["k8s:a=1"], ["k8s:a=2"]))
    assert repo.delete_all() == 3
    assert repo.rules == []


def test_replace_is_atomic_swap() -> None:
    repo = PolicyRepository()
    repo.add(rules(["k8s:owner=x", "k8s:n=1"], ["k8s:owner=x", "k8s:n=2"], ["k8s:owner=y"]))
    revision = repo.replace(Labels.parse(["k8s:owner=x"]), rules(["k8s:owner=x", "k8s:n=3"]))
    assert revision == 3
    assert sorted(r.labels.to_list()[-1] for r in repo.rules) == ["k8s:owner=x", "k8s:owner=y"]
    assert [r.labels.get("n") for r in repo.matching(Labels.parse(["k8s:owner=x"]))] == ["3"]


def test_json_round_trip() -> None:
    repo = PolicyRepository()
    repo.add(rules(["k8s:a=1"]))
    repo.add(
        parse_rules(
            [
                {
                    "endpointSelector": {"matchLabels": {"app": "web"}},
                    "egress": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]}],
                }
            ]
        )
    )
    restored = PolicyRepository.from_json(repo.to_json())
    assert restored.revision == 3
    assert restored.rules == repo.rules
