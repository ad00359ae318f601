"""Benchmark: exact diff of two CID files, product (``CidSetDiff``) against a plain Python-set baseline.

Generates ``--n`` local and ``--n`` remote CIDs as CID files (BCB DICT API, "Arquivo de CIDs": 64
lower-case hex + ``\\n`` a line, in no order) where ``--diff-rate`` of the CIDs are only local and as
many only remote; generation is not timed. Then each implementation runs in its own fresh
subprocess, one after the other, so its wall time and peak RSS (its own ``ru_maxrss``) are measured
alone. Both must find exactly the CIDs that were generated as differences.

    .venv/bin/python benchmarks/bench_diff.py                      # 10 M + 10 M, side by side
    .venv/bin/python benchmarks/bench_diff.py --n 50000000 --skip-baseline
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_GEN_CHUNK = 1 << 20
RSS_TARGET_MB = 1200
SPEED_UP_TARGET = 3


def _write_cid_file(path: Path, records: np.ndarray) -> None:
    """Write ``(n, 32)`` raw CIDs as a CID file, 1 M lines at a time."""
    with open(path, "wb") as fh:
        for start in range(0, len(records), _GEN_CHUNK):
            part = records[start:start + _GEN_CHUNK]
            text = np.empty((len(part), 65), np.uint8)
            text[:, :64] = np.frombuffer(part.tobytes().hex().encode(), np.uint8).reshape(-1, 64)
            text[:, 64] = 0x0A
            fh.write(text.data)


def _digest(cids: list[str]) -> str:
    return hashlib.sha256("".join(f"{c}\n" for c in sorted(cids)).encode()).hexdigest()


def generate(directory: Path, n: int, diff_rate: float, seed: int) -> dict[str, Any]:
    """Write ``local.cids`` and ``remote.cids``; return the expected result (counts and digests)."""
    rng = np.random.default_rng(seed)
    n_diff = round(n * diff_rate)
    local = np.frombuffer(rng.bytes(n * 32), np.uint8).reshape(n, 32)
    only_local = rng.choice(n, n_diff, replace=False)
    keep = np.ones(n, bool)
    keep[only_local] = False
    added = np.frombuffer(rng.bytes(n_diff * 32), np.uint8).reshape(n_diff, 32)
    remote = np.concatenate([local[keep], added])
    remote = np.take(remote, rng.permutation(len(remote)), axis=0)  # the DICT's file has its own order
    _write_cid_file(directory / "local.cids", local)
    _write_cid_file(directory / "remote.cids", remote)
    return {
        "only_local": n_diff, "only_remote": n_diff, "common": n - n_diff,
        "only_local_sha256": _digest([r.tobytes().hex() for r in local[only_local]]),
        "only_remote_sha256": _digest([r.tobytes().hex() for r in added]),
    }


def run_product(local: str, remote: str, tmp: str) -> dict[str, Any]:
    """The product: streaming radix-partitioned diff, validating every line."""
    from vsync_stream.domain.cidset import CidSetDiff

    with CidSetDiff(tmp) as diff:
        diff.local.add_cid_file(local)
        diff.remote.add_cid_file(remote)
        summary = diff.finish()
        only_local, only_remote = list(diff.only_local()), list(diff.only_remote())
    return {"only_local": summary.only_local, "only_remote": summary.only_remote, "common": summary.common,
            "only_local_sha256": _digest(only_local), "only_remote_sha256": _digest(only_remote)}


def run_baseline(local: str, remote: str, tmp: str) -> dict[str, Any]:
    """The baseline: read each file into a set of bytes lines (lower-cased, no validation), subtract.

    Line iteration in binary mode was the fastest plain variant tried (faster than text mode and
    than ``set(fh.read().lower().split())``).
    """

    def load(path: str) -> set[bytes]:
        with open(path, "rb") as fh:
            return {line.rstrip(b"\n").lower() for line in fh}

    local_set, remote_set = load(local), load(remote)
    only_local = [c.decode() for c in local_set - remote_set]
    only_remote = [c.decode() for c in remote_set - local_set]
    return {"only_local": len(only_local), "only_remote": len(only_remote), "common": len(local_set & remote_set),
            "only_local_sha256": _digest(only_local), "only_remote_sha256": _digest(only_remote)}


def _peak_rss_mb() -> float:
    """This process's peak resident set size, MB (VmHWM; ru_maxrss as a fallback)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(impl: str, local: str, remote: str, tmp: str) -> None:
    """Run one implementation in this (fresh) process and print its result and peak RSS as JSON."""
    start = time.perf_counter()
    result = (run_product if impl == "product" else run_baseline)(local, remote, tmp)
    result["work_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result))


def measure(impl: str, directory: Path) -> dict[str, Any]:
    """Run one implementation in a fresh subprocess; wall time includes interpreter start and imports."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", impl, str(directory / "local.cids"), str(directory / "remote.cids"),
         str(directory)],
        check=True, capture_output=True, text=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="CIDs per side [default: 10000000]")
    parser.add_argument("--diff-rate", type=float, default=0.001, help="share only local, and only remote [0.001]")
    parser.add_argument("--skip-baseline", action="store_true", help="run the product only (for sizes whose "
                        "baseline would not fit in memory)")
    parser.add_argument("--tmp-dir", default=None, help="where the CID files and buckets go [system temp dir]")
    parser.add_argument("--seed", type=int, default=20261129)
    parser.add_argument("--child", nargs=4, metavar=("IMPL", "LOCAL", "REMOTE", "TMP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.platform()}, "
          f"cpus {os.cpu_count()} (usable {len(os.sched_getaffinity(0))})")
    with tempfile.TemporaryDirectory(prefix="bench-diff-", dir=args.tmp_dir) as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        expected = generate(directory, args.n, args.diff_rate, args.seed)
        size_mb = sum(p.stat().st_size for p in directory.glob("*.cids")) / 2**20
        print(f"generated {args.n:,} + {args.n:,} CIDs ({size_mb:,.0f} MB of CID files), "
              f"{expected['only_local']:,} only local and {expected['only_remote']:,} only remote, "
              f"in {time.perf_counter() - t0:.1f} s (not counted)")
        impls = ["product"] if args.skip_baseline else ["product", "baseline"]
        results = {impl: measure(impl, directory) for impl in impls}

    keys = ("only_local", "only_remote", "common", "only_local_sha256", "only_remote_sha256")
    exact = {impl: all(r[k] == expected[k] for k in keys) for impl, r in results.items()}
    base = results.get("baseline")
    print(f"\n{'implementation':<16} {'wall s':>8} {'work s':>8} {'peak RSS MB':>12} {'speed-up':>9} {'RSS ratio':>10}"
          f"  exact")
    for impl, r in results.items():
        speed = f"{float(base['wall_s']) / float(r['wall_s']):.2f}x" if base else "-"
        rss = f"{float(r['peak_rss_mb']) / float(base['peak_rss_mb']):.2f}" if base else "-"
        print(f"{impl:<16} {r['wall_s']:>8.2f} {r['work_s']:>8.2f} {r['peak_rss_mb']:>12,.0f} {speed:>9} {rss:>10}"
              f"  {'yes' if exact[impl] else 'NO'}")
    print("\nwall s: whole subprocess (interpreter start, imports, work); work s: inside it; "
          "speed-up and RSS ratio vs the baseline.")
    product = results["product"]
    targets = [f"exact: {'met' if all(exact.values()) else 'MISSED'}",
               f"product peak RSS {product['peak_rss_mb']:,.0f} MB <= {RSS_TARGET_MB:,} MB: "
               f"{'met' if product['peak_rss_mb'] <= RSS_TARGET_MB else 'MISSED'}"]
    if base:
        agree = all(product[k] == base[k] for k in keys)
        speed_up = base["wall_s"] / product["wall_s"]
        targets += [f"product and baseline agree: {'yes' if agree else 'NO'}",
                    f"speed-up {speed_up:.1f}x >= {SPEED_UP_TARGET}x: "
                    f"{'met' if speed_up >= SPEED_UP_TARGET else 'MISSED'}"]
    print("targets (set for the default --n 10000000): " + "; ".join(targets))
    if not all(exact.values()):
        sys.exit("a result differs from the generated differences")


if __name__ == "__main__":
    main()
