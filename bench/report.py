"""Turning raw counts into figures: latency percentiles, run summaries, rate lines, tables."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def merge_hist(hists: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Add latency histograms ``{microseconds: count}`` together."""
    out: dict[int, int] = {}
    for h in hists:
        for k, v in h.items():
            out[int(k)] = out.get(int(k), 0) + v
    return out


def percentiles(hist: Mapping[int, int], ps: Iterable[float] = PERCENTILES) -> dict[str, Any]:
    """p50/p90/p99/p99.9 (and min, mean, max, samples) of a histogram, in microseconds.

    A percentile is the smallest bucket value with at least that share of samples at or below
    it. Empty histograms give ``None`` figures.
    """
    total = sum(hist.values())
    keys = sorted(hist)
    out: dict[str, Any] = {"samples": total}
    if not total:
        for p in ps:
            out[_pname(p)] = None
        out.update(min=None, mean=None, max=None)
        return out
    targets = sorted(ps)
    cum = 0
    ti = 0
    for k in keys:
        cum += hist[k]
        while ti < len(targets) and cum * 100 >= targets[ti] * total - 1e-6:
            out[_pname(targets[ti])] = k
            ti += 1
    out["min"] = keys[0]
    out["mean"] = round(sum(k * v for k, v in hist.items()) / total, 1)
    out["max"] = keys[-1]
    return out


def _pname(p: float) -> str:
    return f"p{p:g}"


def fmt_num(x: float | int | None, digits: int = 0) -> str:
    """Thousands-separated number, or '-' for None."""
    if x is None:
        return "-"
    if digits:
        return f"{x:,.{digits}f}"
    return f"{round(x):,}"


def rate_line(t: float, sent: float, recv: float, conn: float, conns: int, errors: int) -> str:
    """The once-a-second progress line."""
    return (
        f"[{t:6.1f}s] sent/s={fmt_num(sent):>10} recv/s={fmt_num(recv):>10} "
        f"conn/s={fmt_num(conn):>7} conns={conns:,} errors={errors:,}"
    )


def to_json(obj: Any) -> str:
    """Pretty JSON for summaries."""
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


def ratio(flux: float | None, mosq: float | None, higher_is_better: bool) -> float | None:
    """FluxMQ relative to Mosquitto, > 1 meaning FluxMQ is better either way."""
    if flux is None or mosq is None:
        return None
    if higher_is_better:
        return flux / mosq if mosq else None
    return mosq / flux if flux else None


def table(headers: list[str], rows: list[list[str]], markdown: bool = True) -> str:
    """A table as Markdown (``markdown``) or aligned plain text."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(cells)
        )

    out = [line(headers), "  ".join("-" * wd for wd in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)
