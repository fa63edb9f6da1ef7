"""Run inside a pod (`cilia exec`): produce one message, fetch one from the start of a
topic, or create topics; print the outcome.

Usage: kafka_client.py produce|fetch BROKER TOPIC CLIENT_ID | create BROKER TOPIC...
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

_getaddrinfo = socket.getaddrinfo


def _unbracketed(host: Any, *args: Any, **kwargs: Any) -> Any:
    """Tansu advertises an IPv6 listener as `[addr]`, which the client takes for a name."""
    if isinstance(host, str):
        host = host.removeprefix("[").removesuffix("]")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _unbracketed


def main(argv: list[str]) -> int:
    """Print `ok` or the Kafka error's name; exit 0 only for ok."""
    action, broker, *rest = argv
    try:
        if action == "create":
            admin = KafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=20000)
            admin.create_topics([NewTopic(t, 1, 1) for t in rest])
            admin.close()
        elif action == "fetch":
            topic, client_id = rest
            consumer = KafkaConsumer(
                bootstrap_servers=broker,
                client_id=client_id,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
                request_timeout_ms=10000,
            )
            consumer.assign([TopicPartition(topic, 0)])
            if not consumer.poll(timeout_ms=10000, max_records=1):
                raise TimeoutError("no message")
            consumer.close()
        else:
            topic, client_id = rest
            producer = KafkaProducer(
                bootstrap_servers=broker,
                client_id=client_id,
                enable_idempotence=False,  # InitProducerId is outside the produce role
                max_block_ms=10000,
                retries=0,
            )
            producer.send(topic, b"death star plans").get(timeout=10)
            producer.close()
    except Exception as exc:
        print(type(exc).__name__)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
