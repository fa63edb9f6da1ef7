#!/usr/bin/env bash
# The demo: the Star Wars walk-through on local pods with the embedded default
# (one node, no etcd, no Kubernetes). Sets up what is missing, then cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
probe() { printf '$ cilia probe %s %s --port 80\n' "$1" "$2"; cilia probe "$1" "$2" --port 80 || true; }

trap 'step "Cleaning up"; cilia down >/dev/null && echo "cilia down: everything removed"' EXIT

step "Start the agent"
run cilia up
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

step "API-aware (L7) policy: the tiefighter may request a landing, not touch the exhaust port"
DS_IP=$(cilia endpoint get default/deathstar -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ipv4"])')
run cilia apply -f examples/starwars/03-l7-policy.yaml
http() { printf '$ cilia exec default/tiefighter -- curl -s -X %s http://deathstar/%s\n' "$1" "$2"; cilia exec default/tiefighter -- curl -s -m 5 -X "$1" "http://$DS_IP/$2"; echo; }
http POST v1/request-landing
http PUT v1/exhaust-port
run cilia status --all-redirects

step "Remove the policy: the xwing can land again"
run cilia delete -f examples/starwars/03-l7-policy.yaml
probe default/xwing default/deathstar
