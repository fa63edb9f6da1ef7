"""Coverage-guided fuzzing of the agent's CNI handler with atheris (not run in CI).

    pip install atheris
    PYTHONPATH=src:. python tests/fuzz/fuzz_cni.py -max_total_time=600 [CORPUS_DIR]

An input becomes a command, CNI_* variables and a configuration on stdin (built as JSON
from the input, or the input's bytes as they are); `handler.run` must answer as
`assert_cni_answer` of tests/unit/test_cni_fuzz.py says (exit 0 or 1, a result or CNI
error JSON), whatever it is given.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["cilia.cni"]):
    from cilia.cni import handler

from cilia.cni.spec import COMMANDS, ENVIRONMENT, SUPPORTED_VERSIONS
from tests.unit.test_cni_fuzz import FIELDS, Owner, assert_cni_answer

KEYS = [*FIELDS, "ips", "address", "containerID", "ifname", "agent-socket"]


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """A JSON value whose shape the input decides (objects use the keys CNI reads)."""
    kind = fdp.ConsumeIntInRange(0, 6 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(4)
    if kind == 3:
        return fdp.PickValueInList(["", "eth0", "c-1", "10.200.0.9/32", *SUPPORTED_VERSIONS])
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 5:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    n = fdp.ConsumeIntInRange(0, 3)
    return {fdp.PickValueInList(KEYS): value(fdp, depth + 1) for _ in range(n)}


def one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    command = fdp.PickValueInList([*COMMANDS, "VERSION", ""])
    env = {
        name: fdp.PickValueInList(["c-1", "/proc/self/ns/net", "eth0", "K8S_POD_NAME=p", "a;="])
        if fdp.ConsumeBool()
        else fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)).decode("utf-8", "surrogateescape")
        for name in ENVIRONMENT
        if fdp.ConsumeBool()
    }
    owner = Owner(fdp.PickValueInList([None, None, 0, 409, 503]))
    owner.add("c-1")
    owner.views["c-1"].update({"pod-interface": "eth0", "ipv4": "10.200.0.9"})
    if fdp.ConsumeBool():
        conf: dict[str, Any] = {}
        if fdp.ConsumeBool():
            conf = {"cniVersion": fdp.PickValueInList(SUPPORTED_VERSIONS), "name": "n", "type": "t"}
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            conf[fdp.PickValueInList(KEYS)] = value(fdp)
        stdin = json.dumps(conf)
    else:
        stdin = fdp.ConsumeBytes(sys.maxsize).decode("utf-8", "replace")
    code, out = handler.run(command, env, stdin, owner)
    assert_cni_answer(code, out, command)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
