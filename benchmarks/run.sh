#!/usr/bin/env bash
# Cilia benchmarks: datapath throughput and control plane, as same-run ratios.
# Usage: bash benchmarks/run.sh [--quick]     (root; about 5 minutes, --quick about 1.5)
# Exit: 0 all targets met, 3 a target was missed, anything else an error.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ $EUID -ne 0 ]]; then
    echo "benchmarks need root (namespaces, BPF, iptables)" >&2
    exit 2
fi
if [[ ! -x .venv/bin/cilia ]] || ! command -v iperf3 >/dev/null || ! command -v clang-19 >/dev/null; then
    bash scripts/install.sh || exit 1
fi

echo "Cilia benchmarks $(date -u +'%Y-%m-%d %H:%M UTC'), kernel $(uname -r), $(nproc) cores" \
    "$([[ ${1:-} == --quick ]] && echo '(quick)')"
worst=0
for bench in throughput control_plane; do
    .venv/bin/python -m "benchmarks.$bench" "$@"
    rc=$?
    if (( rc != 0 && (worst == 0 || worst == 3) )); then worst=$rc; fi
done
exit "$worst"
