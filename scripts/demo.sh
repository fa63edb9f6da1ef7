#!/usr/bin/env bash
# The demo: the Star Wars walk-through on local pods with the embedded default
# (one node, no etcd, no Kubernetes), with real containerd containers joining the
# same policy through cilia-cni. Sets up what is missing, then cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
probe() { printf '$ cilia probe %s %s --port 80\n' "$1" "$2"; cilia probe "$1" "$2" --port 80 || true; }

# A containerd private to the demo: its own root, state, socket and no CRI plugin.
CTD=$(mktemp -d /tmp/cilia-demo-containerd.XXXXXX)
CTD_SOCK="$CTD/containerd.sock"
CTD_PID=""
IMAGE=cilia.demo/busybox:1
SHIPS=(tiefighter-ctr xwing-ctr)
ctr() { command ctr -a "$CTD_SOCK" -n default "$@"; }

cleanup() {
  step "Cleaning up"
  for ship in "${SHIPS[@]}"; do
    ctr tasks delete --force "$ship" >/dev/null 2>&1 || true
    ctr containers delete "$ship" >/dev/null 2>&1 || true
  done
  cilia cni uninstall >/dev/null 2>&1 || true
  cilia down >/dev/null && echo "cilia down: everything removed"
  if [ -n "$CTD_PID" ]; then
    kill "$CTD_PID" 2>/dev/null || true
    wait "$CTD_PID" 2>/dev/null || true
    echo "containerd (pid $CTD_PID) stopped"
  fi
  # shims of this containerd outlive it (as in production): stop them by pid
  for pid in $(pgrep -f -- "-address $CTD_SOCK" || true); do kill "$pid" 2>/dev/null || true; done
  rm -rf "$CTD"
  rmdir /sys/fs/cgroup/default 2>/dev/null || true  # the cgroup parent of ctr's namespace
}
trap cleanup EXIT

step "Start a private containerd and import a locally built busybox image (nothing is pulled)"
cat >"$CTD/config.toml" <<CONFIG
version = 2
root = "$CTD/root"
state = "$CTD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CTD_SOCK"
[ttrpc]
  address = "$CTD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTD/opt"
CONFIG
containerd --config "$CTD/config.toml" >"$CTD/containerd.log" 2>&1 &
CTD_PID=$!
for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
python3 -c "import sys; from tests.runtimes.containerd_fixture import oci_image_tar
sys.stdout.buffer.write(oci_image_tar('$IMAGE'))" >"$CTD/busybox.tar"
run ctr images import "$CTD/busybox.tar"

step "Start the agent, following that containerd for container labels"
run cilia up --container-runtime containerd --container-runtime-endpoint "containerd=$CTD_SOCK"
run cilia status

step "Launch the deathstar, a tiefighter and an xwing"
run cilia apply -f examples/starwars/01-pods.yaml
run cilia get pods
run cilia endpoint list
run cilia identity list

step "No policy yet: every ship can land"
probe default/tiefighter default/deathstar
probe default/xwing default/deathstar

step "Apply an L3/L4 policy: only org=empire may reach the deathstar, on 80/TCP"
run cilia apply -f examples/starwars/02-l3-l4-policy.yaml
run cilia endpoint list
probe default/tiefighter default/deathstar
probe default/xwing default/deathstar

step "The whole picture, every pair of pods on 80/TCP"
run cilia probe --matrix --ports 80

step "Drops counted in the kernel (per-CPU BPF map)"
run cilia bpf metrics list

DS_IP=$(cilia endpoint get default/deathstar -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ipv4"])')

step "Real containers: containerd starts a TIE fighter and an X-wing through cilia-cni"
run cilia cni install
run ctr run -d --cni --runc-root "$CTD/runc" --label org=empire --label class=tiefighter "$IMAGE" tiefighter-ctr
run ctr run -d --cni --runc-root "$CTD/runc" --label org=alliance --label class=xwing "$IMAGE" xwing-ctr
# ctr returns once the CNI ADD did (policy enforced, init identity); the labels
# follow from containerd's events a moment later
labelled() {  # labelled LABEL COUNT: COUNT endpoints carry LABEL
  cilia endpoint list -o json | python3 -c 'import json,sys
n = sum(sys.argv[1] in e["labels"] for e in json.load(sys.stdin))
sys.exit(0 if n == int(sys.argv[2]) else 1)' "$1" "$2"
}
for label in container:class=tiefighter container:class=xwing; do
  for _ in $(seq 100); do labelled "$label" 1 && break; sleep 0.1; done
done
run cilia endpoint list
land() {  # an HTTP request from inside the container (busybox nc; its wget crashes here)
  printf '$ ctr tasks exec %s sh -c "printf '"'"'GET / HTTP/1.0\\r\\n\\r\\n'"'"' | nc -w 2 deathstar 80"\n' "$1"
  ctr tasks exec --exec-id "land-$RANDOM" "$1" \
    sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $DS_IP 80 | sed -n 1p | grep . " \
    || echo "(no answer: dropped by policy)"
}
land tiefighter-ctr
land xwing-ctr

step "Containers have no namespace: a policy names their container: labels"
run cilia apply -f examples/starwars/04-containers-policy.yaml
land tiefighter-ctr
land xwing-ctr

step "Relabel the running X-wing org=empire: it moves to another identity, no restart"
run ctr containers label xwing-ctr org=empire
for _ in $(seq 100); do labelled container:org=empire 2 && break; sleep 0.1; done
land xwing-ctr
for ship in "${SHIPS[@]}"; do run ctr tasks delete --force "$ship" 2>/dev/null; ctr containers delete "$ship"; done
run cilia delete -f examples/starwars/04-containers-policy.yaml
run cilia cni uninstall

step "The deathstar behind a Service: its ClusterIP is load-balanced in the datapath"
run cilia apply -f examples/starwars/05-deathstar-service.yaml
run cilia get services
run cilia service list
DS_VIP=$(cilia get services deathstar -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["clusterIP"])')
printf '$ cilia policy trace --src-k8s-pod default:xwing --dst-service default/deathstar --dport 80\n'
cilia policy trace --src-k8s-pod default:xwing --dst-service default/deathstar --dport 80 | tail -1 || true

step "API-aware (L7) policy: the tiefighter may request a landing, not touch the exhaust port"
run cilia apply -f examples/starwars/03-l7-policy.yaml
http() { printf '$ cilia exec default/tiefighter -- curl -s -X %s http://deathstar/%s\n' "$1" "$2"; cilia exec default/tiefighter -- curl -s -m 5 -X "$1" "http://$DS_VIP/$2"; echo; }
http POST v1/request-landing
http PUT v1/exhaust-port
run cilia status --all-redirects

step "Remove the policy: the xwing can land again"
run cilia delete -f examples/starwars/03-l7-policy.yaml
probe default/xwing default/deathstar
