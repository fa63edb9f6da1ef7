"""Kafka protocol parsing, rule enforcement and the asyncio Kafka proxy."""
