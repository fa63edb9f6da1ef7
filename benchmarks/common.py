"""Shared pieces of the benchmarks: a real agent under a unique prefix, statistics, output.

Every benchmark compares a candidate with a baseline measured in the same run,
alternating the two, and reports medians and ratios (never absolute targets on
times alone: the machine is shared and noisy).
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.integration.harness import Cilia  # noqa: E402

__all__ = ["Cilia", "agent", "log", "median", "p95", "save", "timed", "verdict"]

RESULTS_DIR = REPO / "benchmarks" / "results"


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sample."""
    return float(statistics.median(xs))


def p95(xs: Sequence[float]) -> float:
    """95th percentile by nearest rank."""
    ordered = sorted(xs)
    return float(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def log(msg: str) -> None:
    """Progress line on stderr (results go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    """PASS/MISS marker for a target."""
    return "PASS" if ok else "MISS"


@contextmanager
def agent(env: dict[str, str] | None = None) -> Iterator[Cilia]:
    """A running agent under a fresh prefix; `cilia down` and a leftover check at the end."""
    tmp = Path(tempfile.mkdtemp(prefix="cilia-bench-"))
    cilia = Cilia(tmp)
    cilia.configure(env or {})
    log(f"agent prefix {cilia.config.name_prefix}, pod range {cilia.config.pod_cidr}")
    failed = False
    try:
        cilia.start()
        yield cilia
    except BaseException:
        failed = True
        raise
    finally:
        left = cilia.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if left:
            print("LEFTOVERS after cilia down:", *left, sep="\n  ", file=sys.stderr)
            if not failed:
                raise SystemExit(1)
        else:
            log("cilia down: nothing left behind")


def save(name: str, data: dict[str, Any]) -> None:
    """Write the raw samples to benchmarks/results/NAME.json (git-ignored)."""
    RESULTS_DIR.mkdir(exist_ok=True)
    data = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
