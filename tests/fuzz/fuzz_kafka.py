"""Coverage-guided fuzzing of the Kafka request parser with atheris (not run in CI).

    pip install atheris
    PYTHONPATH=src:. python tests/fuzz/fuzz_kafka.py -max_total_time=600 [CORPUS_DIR]

Each input is one request frame (the bytes after the size) and goes through what the
proxy does with it (`handle` of tests/unit/test_kafka_fuzz.py: parse, verdicts, denial).
Anything but DecodeError or None is a crash, reported by libFuzzer with its input.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["cilia.proxy.kafka"]):
    import cilia.proxy.kafka.messages
    import cilia.proxy.kafka.policy  # noqa: F401

from tests.unit.test_kafka_fuzz import handle


def one(data: bytes) -> None:
    handle(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
