"""Envoy for HTTP rules: configuration generation (filesystem xDS) and process supervision."""
