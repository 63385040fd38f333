"""`tiergate shadow report`: what the shadow log says about each shadow test.

A summary table per test (samples mirrored, top-1 agreement, disagreements beyond
tolerance, mean top-k overlap, candidate-minus-primary latency, errors) and a PNG of
latency delta and top-1 agreement over time. Both are read from the shadow log alone,
which holds one compact row per compared sample (see `gateway.shadow`), so they cover
the newest `shadow_log_max_rows` samples of all replicas sharing the file.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

PLOT_BINS = 40  # points on the agreement-over-time line


class ReportError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Row:
    shadow: str
    at: float
    outcome: str
    top1_same: bool | None
    overlap: float | None
    latency_delta_ms: float | None


@dataclass(frozen=True, slots=True)
class Summary:
    shadow: str
    mirrored: int  # rows: compared samples plus failed shadow calls
    errors: int
    compared: int
    top1_agreement: float  # share of compared samples with the same top-1 class
    disagreements: int  # beyond tolerance (and beyond the primary's own noise)
    noisy: int
    mean_overlap: float
    latency_delta_p50_ms: float
    latency_delta_p99_ms: float


def read_rows(log_path: Path, name: str | None = None) -> list[Row]:
    if not log_path.exists():
        raise ReportError(f"no shadow log at {log_path} (is a shadow test configured, and has it sampled traffic?)")
    query = "SELECT shadow, at, outcome, top1_same, overlap, latency_delta_ms FROM shadow_samples"
    params: tuple = ()
    if name is not None:
        query += " WHERE shadow = ?"
        params = (name,)
    try:
        with sqlite3.connect(f"file:{log_path}?mode=ro", uri=True) as connection:
            rows = connection.execute(query + " ORDER BY at", params).fetchall()
    except sqlite3.Error as exc:
        raise ReportError(f"cannot read the shadow log {log_path}: {exc}") from None
    return [Row(shadow, at, outcome, None if same is None else bool(same), overlap, delta)
            for shadow, at, outcome, same, overlap, delta in rows]


def summarize(rows: list[Row]) -> list[Summary]:
    summaries = []
    for shadow in sorted({row.shadow for row in rows}):
        mine = [row for row in rows if row.shadow == shadow]
        compared = [row for row in mine if row.outcome != "error"]
        deltas = sorted(row.latency_delta_ms for row in compared if row.latency_delta_ms is not None)
        summaries.append(Summary(
            shadow=shadow,
            mirrored=len(mine),
            errors=len(mine) - len(compared),
            compared=len(compared),
            top1_agreement=_mean([float(row.top1_same) for row in compared]),
            disagreements=sum(row.outcome == "disagree" for row in compared),
            noisy=sum(row.outcome == "noisy" for row in compared),
            mean_overlap=_mean([row.overlap for row in compared]),
            latency_delta_p50_ms=percentile(deltas, 0.50),
            latency_delta_p99_ms=percentile(deltas, 0.99),
        ))
    return summaries


def format_table(summaries: list[Summary]) -> str:
    header = ("shadow", "mirrored", "errors", "top-1 agree", "disagree", "noisy", "mean overlap",
              "Δlatency p50", "Δlatency p99")
    lines = [[
        s.shadow, str(s.mirrored), str(s.errors), _number(s.top1_agreement, "{:.1%}"), str(s.disagreements),
        str(s.noisy), _number(s.mean_overlap, "{:.3f}"), _number(s.latency_delta_p50_ms, "{:+.1f} ms"),
        _number(s.latency_delta_p99_ms, "{:+.1f} ms"),
    ] for s in summaries]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]

    def render(cells) -> str:  # the name column left-aligned, numbers right-aligned
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, widths))
        )

    return "\n".join([render(header), render(["-" * width for width in widths])] + [render(line) for line in lines])


def plot(rows: list[Row], png_path: Path) -> None:
    """Latency delta per sample and top-1 agreement per time bin, one colour per test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, agreement) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    for index, shadow in enumerate(sorted({row.shadow for row in rows})):
        colour = f"C{index % 10}"
        compared = [row for row in rows if row.shadow == shadow and row.outcome != "error"]
        timed = [row for row in compared if row.latency_delta_ms is not None]
        latency.scatter(
            [datetime.fromtimestamp(row.at) for row in timed], [row.latency_delta_ms for row in timed],
            s=6, alpha=0.5, color=colour, label=shadow,
        )
        bins = _time_bins(compared)
        agreement.plot(
            [datetime.fromtimestamp(at) for at, _ in bins], [100 * share for _, share in bins],
            marker="o", markersize=3, color=colour, label=shadow,
        )
    latency.axhline(0, color="grey", linewidth=0.8)
    latency.set_ylabel("candidate − primary latency (ms)")
    latency.legend(loc="upper right", fontsize="small")
    agreement.set_ylabel("top-1 agreement (%)")
    agreement.set_ylim(-2, 102)
    agreement.set_xlabel("time (local)")
    figure.suptitle("tiergate shadow tests")
    figure.autofmt_xdate()
    figure.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def write_report(log_path: Path, name: str | None, png_path: Path | None) -> str:
    """The summary table (returned) and the plot (written to `png_path`, default next to the log)."""
    rows = read_rows(log_path, name)
    if not rows:
        raise ReportError(f"the shadow log {log_path} has no samples" + (f" of shadow test {name!r}" if name else ""))
    png_path = png_path or log_path.with_name(f"shadow-report-{name or 'all'}.png")
    plot(rows, png_path)
    return f"{format_table(summarize(rows))}\n\nplot: {png_path}"


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _number(value: float, form: str) -> str:
    return "-" if math.isnan(value) else form.format(value)  # nothing compared: no figure


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _time_bins(rows: list[Row]) -> list[tuple[float, float]]:
    """(bin middle, share of top-1 agreement) over up to PLOT_BINS equal time spans."""
    if not rows:
        return []
    start, end = rows[0].at, rows[-1].at
    width = max(end - start, 1e-9) / PLOT_BINS
    counts: dict[int, list[int]] = {}
    for row in rows:
        slot = min(int((row.at - start) / width), PLOT_BINS - 1)
        agree_total = counts.setdefault(slot, [0, 0])
        agree_total[0] += bool(row.top1_same)
        agree_total[1] += 1
    return [(start + (slot + 0.5) * width, agree / total) for slot, (agree, total) in sorted(counts.items())]
