"""Kubernetes label key and value syntax."""

from __future__ import annotations

import re

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY_RE = re.compile(rf"^({_NAME}/)?{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def key_error(key: str, strict: bool = False) -> str | None:
    """Why `key` is not a valid label key, or None. `strict` applies Kubernetes length limits."""
    if not _KEY_RE.match(key):
        return f"invalid label key {key!r}"
    if strict:
        prefix, _, name = key.rpartition("/")
        if len(name) > 63 or len(prefix) > 253:
            return f"label key {key!r} is too long"
    return None


def value_error(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if len(value) > 63 or not _VALUE_RE.match(value):
        return f"invalid label value {value!r}"
    return None


def dns_label_error(name: str) -> str | None:
    """Why `name` is not a DNS-1123 label (a namespace name), or None."""
    if len(name) > 63 or not _DNS_LABEL_RE.match(name):
        return f"invalid name {name!r}: must be a lowercase RFC 1123 label"
    return None


def dns_subdomain_error(name: str) -> str | None:
    """Why `name` is not a DNS-1123 subdomain (an object name), or None."""
    if len(name) > 253 or not _DNS_SUBDOMAIN_RE.match(name):
        return f"invalid name {name!r}: must be a lowercase RFC 1123 subdomain"
    return None
