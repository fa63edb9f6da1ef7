"""The validation error shared by selectors, policies and manifests."""

from __future__ import annotations


class ValidationError(ValueError):
    """Refused input: `path` names the offending field, `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason

    def prefixed(self, prefix: str) -> ValidationError:
        """The same error with `prefix` prepended to its path."""
        return ValidationError(join_path(prefix, self.path), self.reason)


def join_path(prefix: str, part: str | int) -> str:
    """Append a field name or list index to a dotted/indexed path."""
    if isinstance(part, int):
        return f"{prefix}[{part}]"
    if not part:
        return prefix
    if not prefix:
        return part
    if part.startswith("["):
        return prefix + part
    return f"{prefix}.{part}"
