"""The policy repository: the agent's list of rules and its revision."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

from cilia.labels import Labels
from cilia.policy.api import Rule
from cilia.policy.parse import parse_rules


class PolicyRepository:
    """Rules in import order; every change bumps `revision` (which starts at 1)."""

    def __init__(self, rules: Iterable[Rule] = (), revision: int = 1) -> None:
        self._rules: list[Rule] = list(rules)
        self._revision = revision
        self._lock = threading.Lock()

    @property
    def revision(self) -> int:
        """The current revision."""
        return self._revision

    @property
    def rules(self) -> list[Rule]:
        """A copy of the current rules."""
        return list(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, rules: Iterable[Rule]) -> int:
        """Append rules; returns the new revision."""
        with self._lock:
            self._rules.extend(rules)
            self._revision += 1
            return self._revision

    def delete_by_labels(self, labels: Labels) -> tuple[int, int]:
        """Delete rules carrying all of `labels`; returns (revision, number deleted).

        The revision is bumped only when something was deleted.
        """
        with self._lock:
            kept = [r for r in self._rules if not r.labels.contains_all(labels)]
            deleted = len(self._rules) - len(kept)
            if deleted:
                self._rules = kept
                self._revision += 1
            return self._revision, deleted

    def delete_all(self) -> int:
        """Delete every rule; returns the revision (bumped only if there were rules)."""
        return self.delete_by_labels(Labels())[0]

    def replace(self, owner_labels: Labels, rules: Iterable[Rule]) -> int:
        """Atomically swap every rule carrying `owner_labels` for `rules`; returns the revision."""
        new = list(rules)
        with self._lock:
            self._rules = [r for r in self._rules if not r.labels.contains_all(owner_labels)]
            self._rules.extend(new)
            self._revision += 1
            return self._revision

    def matching(self, labels: Labels) -> list[Rule]:
        """The rules carrying all of `labels`."""
        return [r for r in self._rules if r.labels.contains_all(labels)]

    def to_json(self) -> str:
        """The repository as JSON, for persistence across agent restarts."""
        with self._lock:
            data = {"revision": self._revision, "rules": [r.to_dict() for r in self._rules]}
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PolicyRepository:
        """Rebuild from `to_json()` output (rules are validated again)."""
        data = json.loads(text)
        return cls(parse_rules(data["rules"], "rules"), int(data["revision"]))
