"""Summarise a kernel benchmark JSON against the targets: `python bench/kernel_report.py RUN.json`.

RUN.json is what `pytest bench/ --benchmark-json=RUN.json` wrote. Prints one Markdown table row
per op / shape / pass / variant: median time, GB/s and share of the copy bandwidth (memory-bound
ops) or TFLOP/s, peak memory, and for the hamner variant its speed-up over the fastest other
variant and whether it meets the targets (at least as fast as every other variant; at least 80%
of copy bandwidth for memory-bound ops).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout that was not pip-installed, too

from hamner.commands.parsing import ArgumentParser, command  # noqa: E402

COPY_TARGET = 0.8
COLUMNS = ("op", "shape", "pass", "variant", "median ms", "GB/s", "% of copy", "TFLOP/s", "peak MiB",
           "hamner speed-up", "target")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report_rows(benchmarks: list[dict]) -> list[list[str]]:
    """Table rows from pytest-benchmark entries that carry our extra_info; hamner first in each group."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for b in benchmarks:
        info = b.get("extra_info", {})
        if "median_ms" in info:
            groups.setdefault((info["op"], info["shape"], info["pass"]), []).append(info)
    rows = []
    for (op, shape, step), infos in groups.items():
        infos.sort(key=lambda i: (i["variant"] != "hamner", i["median_ms"]))
        others = [i["median_ms"] for i in infos if i["variant"] != "hamner"]
        for info in infos:
            speedup = target = None
            if info["variant"] == "hamner" and others:
                speedup = min(others) / info["median_ms"]
                fast_enough = speedup >= 1.0
                bandwidth_ok = info.get("fraction_of_copy", 1.0) >= COPY_TARGET
                target = "met" if fast_enough and bandwidth_ok else "MISSED"
            fraction = info.get("fraction_of_copy")
            rows.append([op, shape, step, info["variant"], _fmt(info["median_ms"], ".4f"),
                         _fmt(info.get("gbps"), ",.0f"), _fmt(None if fraction is None else 100 * fraction, ".0f"),
                         _fmt(info.get("tflops"), ".1f"), _fmt(info.get("peak_memory_mb"), ",.0f"),
                         _fmt(speedup, ".2f") + ("x" if speedup is not None else ""), target or ""])
    return rows


def markdown(rows: list[list[str]]) -> str:
    """A Markdown table of `rows` under COLUMNS."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@command()
def main(argv: list[str] | None = None) -> int:
    """Print the table of one pytest-benchmark JSON run."""
    parser = ArgumentParser(prog="python bench/kernel_report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="JSON written by pytest bench/ --benchmark-json=RUN.json")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.run.read_text())
        benchmarks = data["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: cannot read {args.run} as a pytest-benchmark JSON file ({exc})", file=sys.stderr)
        return 2
    machine = data.get("machine_info", {}).get("hamner_bench", {})
    copy = next((b["extra_info"]["copy_gbps"] for b in benchmarks if "copy_gbps" in b.get("extra_info", {})), None)
    print(f"{machine.get('gpu') or machine.get('device', '?')}, torch {machine.get('torch', '?')}, "
          f"copy bandwidth {_fmt(copy, ',.0f')} GB/s"
          + ("" if machine.get("timing_meaningful", True) else " (CPU run: timings NOT meaningful)"))
    print(markdown(report_rows(benchmarks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
