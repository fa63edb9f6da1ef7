"""L7 proxies: Envoy for HTTP rules, Cilia's own asyncio proxy for Kafka rules."""
