"""Run a benchmark: table, JSON and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from netoffload.bench import BenchContext, BenchResult, get
from netoffload.tables import compact_table


def run_bench(name: str, quick: bool, json_path: Path | None, console: Console) -> BenchResult:
    bench = get(name)

    def progress(msg: str) -> None:
        console.print(f"[dim]{name}: {msg}[/dim]")

    res = bench.run(BenchContext(quick=quick, progress=progress))
    if res.rows:
        t = compact_table(f"bench {name}")
        cols = list(res.rows[0])
        for c in cols:
            t.add_column(c)
        for r in res.rows:
            t.add_row(*[_fmt(r.get(c)) for c in cols])
        console.print(t)
    mt = compact_table(f"{name}: metrics")
    mt.add_column("metric")
    mt.add_column("value", justify="right")
    mt.add_column("target")
    mt.add_column("met")
    verdicts = res.verdicts()
    for k, v in res.metrics.items():
        tgt = res.targets.get(k)
        mt.add_row(
            k,
            _fmt(v),
            f"{tgt[0]} {tgt[1]}" if tgt else "reported",
            ("yes" if verdicts[k] else "NO") if k in verdicts else "",
        )
    console.print(mt)
    for n in res.notes:
        console.print(f"[dim]{n}[/dim]")
    png = json_path.with_suffix(".png") if json_path else Path("bench-results") / f"{name}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    _plot(name, res, png)
    console.print(f"plot: {png}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "bench": name,
            "metrics": res.metrics,
            "targets": {k: {"op": op, "value": v} for k, (op, v) in res.targets.items()},
            "met": verdicts,
            "quick": quick,
            "rows": res.rows,
        }
        json_path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return res


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _plot(name: str, res: BenchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # series "PANEL|label" share a panel of their own (other units); plain ones the bench's
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for label, pts in res.series.items():
        panel, _, short = label.rpartition("|")
        panels.setdefault(panel or name, {})[short] = pts
    ncols = 1 + len(panels)
    fig, axes = plt.subplots(1, ncols, figsize=(7 + 4.5 * len(panels), 4), squeeze=False)
    ax0 = axes[0][0]
    keys = list(res.metrics)
    vals = [res.metrics[k] for k in keys]
    colors = []
    verdicts = res.verdicts()
    for k in keys:
        colors.append(
            "tab:green" if verdicts.get(k) else "tab:red" if k in verdicts else "tab:gray"
        )
    ax0.barh(keys, vals, color=colors)
    for i, k in enumerate(keys):
        if k in res.targets:
            ax0.plot([res.targets[k][1]] * 2, [i - 0.4, i + 0.4], "k--")
    ax0.set_title(f"{name}: metrics (dashed: target)")
    ax0.set_xscale("symlog", linthresh=1)
    for ax, (panel, series) in zip(axes[0][1:], panels.items(), strict=True):
        for label, pts in series.items():
            xs, ys = zip(*pts, strict=True) if pts else ((), ())
            ax.plot(xs, ys, marker="o", label=label)
        ax.legend(fontsize="small")
        ax.set_title(panel)
        if res.xticks:
            ax.set_xticks(
                list(res.xticks), list(res.xticks.values()), rotation=30, fontsize="small"
            )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
