"""containerd container start to network ready: `cilia-cni` against the reference `bridge`.

A private containerd (tests/runtimes/containerd_fixture.py: own root, state, socket,
local busybox image) and a real agent watching it. Each sample is one
`ctr run -d --cni IMAGE ID`, timed until ctr returns: ctr creates the task, runs the
CNI ADD (synchronous for both plugins: Cilia's returns once policy is enforced) and
starts the task, so the container runs with its network ready. Candidate: Cilia's
conflist (`cilia cni install`); baseline, same run and alternated: containernetworking-
plugins' `bridge` + `host-local` from /usr/lib/cni (a per-run bridge, no masquerade).
`ctr run --cni` reads only the first file of /etc/cni/net.d and plugins from
/opt/cni/bin, so the benchmark swaps one file there (and removes all it made at the
end). Between samples (untimed) the container is killed and deleted, and for Cilia
the watcher's removal of its endpoint is awaited.

Usage: python -m benchmarks.bench_containerd_start [--quick]   (root)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import agent, log, median, p95, save, timed, verdict
from tests.runtimes.containerd_fixture import CTR_DEFAULT, REFERENCE_PLUGINS, Containerd

from cilia.cli.client import ApiError, Client

TARGET_RATIO = 1.5
CONF_DIR = Path("/etc/cni/net.d")
BIN_DIR = Path("/opt/cni/bin")
CONF = CONF_DIR / "00-cilia-bench.conflist"


def _write(path: Path, conf: dict[str, object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(conf))
    tmp.replace(path)


def _gone(client: Client, cni_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.request("GET", f"/endpoint/container-id:{cni_id}")
        except ApiError:
            return
        time.sleep(0.01)
    raise RuntimeError(f"endpoint of {cni_id} not removed after its exit")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 samples each instead of 25")
    args = ap.parse_args()
    rounds = 8 if args.quick else 25
    if os.geteuid() != 0:
        log("needs root")
        return 2
    tag = secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix="cilia-bench-ctd-"))
    made = [d for d in (CONF_DIR.parent, CONF_DIR, BIN_DIR.parent, BIN_DIR) if not d.exists()]
    if CONF_DIR.exists() and any(p.name < CONF.name for p in CONF_DIR.iterdir()):
        log(f"{CONF_DIR} has a file sorting before {CONF.name}: ctr would not use ours")
        return 2
    linked = [BIN_DIR / p for p in ("bridge", "host-local") if not (BIN_DIR / p).exists()]
    bridge = f"cbr-{tag}"
    daemon = Containerd(tmp / "containerd", tag)
    samples: dict[str, list[float]] = {"cilia": [], "bridge": []}
    try:
        daemon.start()
        daemon.import_image()
        env = {
            "CILIA_CONTAINER_RUNTIME": '["containerd"]',
            "CILIA_CONTAINER_RUNTIME_ENDPOINT": json.dumps({"containerd": daemon.socket}),
        }
        with agent(env) as cilia:
            socket = str(cilia.config.socket_path)
            install = ["cni", "install", f"--conf-dir={tmp}", f"--bin-dir={BIN_DIR}"]
            cilia.run(*install, f"--agent-socket={socket}")
            CONF_DIR.mkdir(parents=True, exist_ok=True)
            for plugin in linked:
                plugin.symlink_to(REFERENCE_PLUGINS / plugin.name)
            confs: dict[str, dict[str, object]] = {
                "cilia": json.loads((tmp / "00-cilia.conflist").read_text()),
                "bridge": {
                    "cniVersion": "1.0.0",
                    "name": f"bench-bridge-{tag}",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": bridge,
                            "isGateway": True,
                            "ipMasq": False,
                            "ipam": {
                                "type": "host-local",
                                "subnet": "10.251.0.0/16",
                                "dataDir": str(tmp / "host-local"),
                            },
                        }
                    ],
                },
            }
            client = cilia.client
            for i in range(rounds):
                order = ("cilia", "bridge") if i % 2 == 0 else ("bridge", "cilia")
                for which in order:
                    _write(CONF, confs[which])
                    cid = f"b{which[0]}{i}-{tag}"
                    argv = ["ctr", "-a", daemon.socket, "-n", CTR_DEFAULT, "run", "-d", "--cni"]
                    argv += ["--cgroup", f"{daemon.cgroup_parent}/{cid}", "--label", "app=bench"]
                    argv += [daemon.image, cid]
                    secs, proc = timed(lambda a=argv: subprocess.run(a, capture_output=True))
                    if proc.returncode != 0:
                        raise RuntimeError(f"{which}: ctr run failed: {proc.stderr.decode()}")
                    samples[which].append(secs)
                    daemon.remove_container(cid, CTR_DEFAULT)
                    if which == "cilia":
                        _gone(client, f"{CTR_DEFAULT}-{cid}")
            CONF.unlink()
            cilia.run("cni", "uninstall", f"--conf-dir={tmp}", f"--bin-dir={BIN_DIR}")
    finally:
        CONF.unlink(missing_ok=True)
        for plugin in linked:
            plugin.unlink(missing_ok=True)
        (BIN_DIR / "cilia-cni").unlink(missing_ok=True)
        for folder in reversed(made):
            if folder.exists():
                folder.rmdir()
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        try:
            if daemon.proc is not None:
                daemon.clean()
        finally:
            daemon.stop()
        left = daemon.leftovers()
        shutil.rmtree(tmp, ignore_errors=True)
        if left:
            print("LEFTOVERS:", *left, sep="\n  ", file=sys.stderr)
    med = {k: median(v) for k, v in samples.items()}
    ratio = med["cilia"] / med["bridge"]
    ok = ratio <= TARGET_RATIO
    print(
        f"containerd start to network ready ({rounds} each): cilia-cni median "
        f"{med['cilia'] * 1000:.1f} ms (p95 {p95(samples['cilia']) * 1000:.1f}), bridge "
        f"{med['bridge'] * 1000:.1f} ms (p95 {p95(samples['bridge']) * 1000:.1f}), ratio "
        f"{ratio:.2f} (target <= {TARGET_RATIO}) {verdict(ok)}"
    )
    save("containerd-start", {"kernel": os.uname().release, **samples})
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
