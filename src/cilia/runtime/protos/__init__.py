"""Minimal .proto subsets of containerd's API and of the CRI (runtime.v1).

Only the messages, fields and services Cilia uses, with the published package names,
service names and field numbers, so they are wire-compatible with containerd 1.6 and
any CRI runtime. `cilia.runtime.grpc_protos` compiles them at first use into a cache
folder and adds that folder to this package's path, so the generated `*_pb2` modules
import as `cilia.runtime.protos.<file>_pb2` (they are never committed).
"""
