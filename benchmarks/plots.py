"""PNG plots of benchmark JSON (matplotlib, Agg backend: no display needed).

Each function takes the JSON a bench writes (as a dict) and a path, draws one figure
and returns the path. `make_all` draws what the data it is given allows:

  latency_cdf.png   keystroke -> answer latency CDF (``bench typing``: ``keystrokes[].latency_ms``)
  speedup.png       decode speedup per drafter over ``none`` (``bench speculative``: ``summary``)
  pass_at_1.png     pass@1 per prompt layout and kind, post-processed and raw (``bench quality``)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(Path(path))
    plt.close(fig)
    return Path(path)


def latency_cdf(typing: dict[str, Any], path: str | Path, goals: dict[str, float] | None = None) -> Path:
    """Empirical CDF of keystroke latencies (seconds), all keystrokes and model runs only."""
    plt = _plt()
    keys = typing.get("keystrokes") or []
    lat = sorted(k["latency_ms"] / 1e3 for k in keys if k.get("latency_ms") is not None)
    model = sorted(k["latency_ms"] / 1e3 for k in keys if k.get("latency_ms") is not None and k.get("stats")
                   and not k["stats"].get("typed_through"))
    goals = goals or (typing.get("summary") or {}).get("goals") or {"p50_s": 0.8, "p95_s": 2.0}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for xs, label in ((lat, f"all keystrokes ({len(lat)})"), (model, f"model runs ({len(model)})")):
        if xs and not (xs is model and len(model) == len(lat)):
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=label)
    if "p50_s" in goals:
        ax.axvline(goals["p50_s"], color="tab:green", ls="--", lw=1, label=f"p50 goal {goals['p50_s']} s")
    if "p95_s" in goals:
        ax.axvline(goals["p95_s"], color="tab:red", ls="--", lw=1, label=f"p95 goal {goals['p95_s']} s")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.axhline(0.95, color="grey", lw=0.5)
    ax.set_xlabel("keystroke -> answer latency (s)")
    ax.set_ylabel("fraction of keystrokes")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    name = (typing.get("script") or {}).get("name", "")
    ax.set_title(f"Keystroke latency CDF{' - ' + name if name else ''}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path)


def speedup(spec: dict[str, Any], path: str | Path) -> Path:
    """Decode speedup per drafter (total and median per task) with tok/s and acceptance labels."""
    plt = _plt()
    summ = spec.get("summary") or {}
    names = list(summ)
    tot = [summ[d].get("speedup_total") or 0.0 for d in names]
    med = [summ[d].get("speedup_median") or 0.0 for d in names]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = list(range(len(names)))
    w = 0.38
    b1 = ax.bar([i - w / 2 for i in x], tot, w, label="x total decode time")
    ax.bar([i + w / 2 for i in x], med, w, label="x median per task")
    for i, d in enumerate(names):
        s = summ[d]
        acc = s.get("acceptance")
        label = f"{s.get('decode_tok_s', 0):.1f} tok/s" + (f"\nacc {acc:.2f}" if acc is not None else "")
        ax.annotate(label, (b1[i].get_x() + w, max(tot[i], med[i])), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("speedup over `none` (x)")
    ax.set_ylim(0, max([1.0, *tot, *med]) * 1.3)
    m = spec.get("machine") or {}
    ax.set_title(f"Speculative decoding speedup per drafter ({m.get('device', '?')} {m.get('dtype', '?')})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _save(plt, fig, path)


def pass_at_1(quality: dict[str, Any], path: str | Path) -> Path:
    """pass@1 per layout, one bar group per kind: post-processed (solid) and raw (hatched)."""
    plt = _plt()
    summ = quality.get("summary") or {}
    layouts = list(summ)
    kinds = [k for k in ("single", "multi") if any(k in summ[la] for la in layouts)]
    kinds += sorted({k for la in layouts for k in summ[la]} - set(kinds))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(layouts) + 2), 4.2), dpi=110)
    n = max(1, len(kinds) * 2)
    w = 0.8 / n
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, kind in enumerate(kinds):
        c = colors[j % len(colors)]
        post = [(summ[la].get(kind) or {}).get("pass_at_1") or 0.0 for la in layouts]
        raw = [(summ[la].get(kind) or {}).get("raw_pass_at_1") or 0.0 for la in layouts]
        xs = [i - 0.4 + w * (2 * j + 0.5) for i in range(len(layouts))]
        bars = ax.bar(xs, post, w, color=c, label=f"{kind} (post)")
        ax.bar([x + w for x in xs], raw, w, color=c, alpha=0.45, hatch="//", label=f"{kind} (raw)")
        for b, la in zip(bars, layouts):
            s = summ[la].get(kind)
            if s:
                ax.annotate(f"n={s['tasks']}", (b.get_x() + w, b.get_height()), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(layouts)))
    ax.set_xticklabels(layouts)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("pass@1")
    m = quality.get("machine") or {}
    ax.set_title(f"HumanEval infilling pass@1 per layout\n{m.get('model', '?')} ({m.get('device', '?')} "
                 f"{m.get('dtype', '?')})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=max(1, len(kinds)), loc="upper right")
    return _save(plt, fig, path)


def make_all(out_dir: str | Path, quality: dict[str, Any] | None = None, speculative: dict[str, Any] | None = None,
             typing: dict[str, Any] | None = None) -> list[Path]:
    """Every plot the given results allow; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    if typing and typing.get("keystrokes"):
        paths.append(latency_cdf(typing, out / "latency_cdf.png"))
    if speculative and speculative.get("summary"):
        paths.append(speedup(speculative, out / "speedup.png"))
    if quality and quality.get("summary"):
        paths.append(pass_at_1(quality, out / "pass_at_1.png"))
    return paths
