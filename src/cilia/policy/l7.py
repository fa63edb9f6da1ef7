"""L7 rules of a port rule: HTTP and Kafka (kept in the model, enforced by the L7 proxy)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from cilia.policy.errors import fail

KAFKA_API_KEYS: dict[str, int] = {
    "produce": 0,
    "fetch": 1,
    "offsets": 2,
    "metadata": 3,
    "leaderandisr": 4,
    "stopreplica": 5,
    "updatemetadata": 6,
    "controlledshutdown": 7,
    "offsetcommit": 8,
    "offsetfetch": 9,
    "findcoordinator": 10,
    "joingroup": 11,
    "heartbeat": 12,
    "leavegroup": 13,
    "syncgroup": 14,
    "describegroups": 15,
    "listgroups": 16,
    "saslhandshake": 17,
    "apiversions": 18,
    "createtopics": 19,
    "deletetopics": 20,
}
KAFKA_ROLE_KEYS: dict[str, frozenset[int]] = {
    "produce": frozenset({0, 3, 18}),
    "consume": frozenset({1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 18}),
}
KAFKA_MAX_TOPIC_LEN = 255
_TOPIC_RE = re.compile(r"^[a-zA-Z0-9._-]*$")


class ApiModel(BaseModel):
    """Base of every policy API model: immutable, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PortRuleHTTP(ApiModel):
    """An HTTP allowance; method, path and host are regular expressions matching the whole value."""

    path: str | None = None
    method: str | None = None
    host: str | None = None
    headers: tuple[str, ...] | None = None

    @field_validator("path", "method", "host")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                fail(f"invalid regular expression {value!r}: {err}")
        return value


class PortRuleKafka(ApiModel):
    """A Kafka allowance: `role` or `apiKey`, optionally narrowed by version, client and topic."""

    role: str | None = None
    apiKey: str | None = None
    apiVersion: str | None = None
    clientID: str | None = None
    topic: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PortRuleKafka:
        if self.role and self.apiKey:
            fail(f"Cannot set both Role:{self.role!r} and APIKey:{self.apiKey!r} together")
        if self.role and self.role.lower() not in KAFKA_ROLE_KEYS:
            fail(f"Invalid Kafka role {self.role!r}", "role")
        if self.apiKey and _api_key_number(self.apiKey) is None:
            fail(f"Unknown Kafka API key {self.apiKey!r}", "apiKey")
        if self.apiVersion and not (self.apiVersion.isdigit() and int(self.apiVersion) < 32768):
            fail(f"invalid Kafka API version {self.apiVersion!r}", "apiVersion")
        if self.topic is not None:
            if len(self.topic) > KAFKA_MAX_TOPIC_LEN:
                fail(f"Topic name exceeds max length of {KAFKA_MAX_TOPIC_LEN}", "topic")
            if not _TOPIC_RE.match(self.topic):
                fail(f"Invalid Kafka topic name {self.topic!r}", "topic")
        return self

    def api_keys(self) -> frozenset[int] | None:
        """The allowed API keys, or None for all."""
        if self.role:
            return KAFKA_ROLE_KEYS[self.role.lower()]
        if self.apiKey:
            number = _api_key_number(self.apiKey)
            return frozenset() if number is None else frozenset({number})
        return None


def _api_key_number(text: str) -> int | None:
    if text.isdigit():
        return int(text) if int(text) in KAFKA_API_KEYS.values() else None
    return KAFKA_API_KEYS.get(text.lower())


class L7Rules(ApiModel):
    """The L7 part of a port rule: HTTP or Kafka, never both."""

    http: tuple[PortRuleHTTP, ...] | None = None
    kafka: tuple[PortRuleKafka, ...] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> L7Rules:
        if self.http and self.kafka:
            fail("multiple L7 protocol rule types specified in single rule")
        return self

    @property
    def kind(self) -> Literal["http", "kafka"] | None:
        """Which L7 protocol the rules are for, or None when empty."""
        if self.http:
            return "http"
        return "kafka" if self.kafka else None
