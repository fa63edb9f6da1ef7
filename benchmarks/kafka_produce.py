"""Run inside a pod (`cilia exec`): produce N messages with kafka-python, print the rate.

Usage: kafka_produce.py create BROKER TOPIC
       kafka_produce.py produce BROKER TOPIC N MODE [SIZE]

MODE `pipelined` sends all N messages and then flushes (the producer's default
batching, up to 5 requests in flight); MODE `sync` waits for each message's
acknowledgement before sending the next (one produce request per message).
The connection and the topic's metadata are set up by one acknowledged
warm-up message before the clock starts. Prints one JSON line:
{"messages": N, "seconds": S, "rate": N/S}; on error the exception's name, exit 1.
"""

from __future__ import annotations

import json
import sys
import time

from kafka import KafkaProducer  # type: ignore[import-untyped]
from kafka.admin import KafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from kafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]


def create(broker: str, topic: str) -> None:
    """Create a one-partition topic (no error if it exists)."""
    admin = KafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=20000)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def produce(broker: str, topic: str, count: int, mode: str, size: int) -> dict[str, float]:
    """Produce `count` messages of `size` bytes; the measured rate."""
    producer = KafkaProducer(
        bootstrap_servers=broker,
        client_id="bench",
        enable_idempotence=False,  # InitProducerId is outside the produce role
        acks=1,
        max_block_ms=20000,
        retries=0,
    )
    payload = b"x" * size
    try:
        producer.send(topic, payload).get(timeout=20)  # connection + metadata
        start = time.perf_counter()
        if mode == "sync":
            for _ in range(count):
                producer.send(topic, payload).get(timeout=20)
        else:
            futures = [producer.send(topic, payload) for _ in range(count)]
            producer.flush(timeout=60)
            for future in futures:
                future.get(timeout=0)  # raises if any message failed
        seconds = time.perf_counter() - start
    finally:
        producer.close(timeout=5)
    return {"messages": count, "seconds": seconds, "rate": count / seconds}


def main(argv: list[str]) -> int:
    """Dispatch; print JSON or the error's name."""
    action, broker, topic, *rest = argv
    try:
        if action == "create":
            create(broker, topic)
            print(json.dumps({"created": topic}))
        else:
            count, mode = int(rest[0]), rest[1]
            size = int(rest[2]) if len(rest) > 2 else 100
            print(json.dumps(produce(broker, topic, count, mode, size)))
    except Exception as exc:
        print(type(exc).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
