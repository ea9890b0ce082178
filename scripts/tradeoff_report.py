"""Tables, plots and target checks of ``scripts/bench_tradeoff.py``'s results.

Per-seed rows -> mean ± std per (arm, level) (:func:`aggregate`), the issue's targets
(:func:`checks`), ``tradeoff_<task>.{json,md,png}`` (:func:`write_result`) and the
``--combine`` of several earlier outputs (:func:`combined`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def task_slug(task: str, variation: str) -> str:
    name = task.split("/")[-1].split("-")[0].lower()
    return name if variation == "none" else f"{name}_{variation}"


def aggregate(per_seed: list[list[dict[str, Any]]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Mean ± std per (arm, level) over the seeds that have the row, in first-seen order."""
    keys = list(dict.fromkeys((r["arm"], r["level"]) for rows in per_seed for r in rows))
    out = []
    for arm, level in keys:
        has = [
            (s, r)
            for s, rows in zip(seeds, per_seed, strict=True)
            for r in rows
            if (r["arm"], r["level"]) == (arm, level)
        ]
        rs = [r for _, r in has]
        succ = mean_std([r["success"] for r in rs])
        macs = statistics.fmean(r["macs"] for r in rs)
        dense = statistics.fmean(r["dense_macs"] for r in rs)
        rec: dict[str, Any] = {
            "arm": arm,
            "level": level,
            "success_mean": succ[0],
            "success_std": succ[1],
            "success_per_seed": [r["success"] for r in rs],
            "seeds": [s for s, _ in has],
            "return_mean": statistics.fmean(r["return"] for r in rs),
            "macs": macs,
            "of_dense": macs / dense,
            "samples": statistics.fmean(r.get("samples", 0) for r in rs),
        }
        if "target_macs" in rs[0]:
            target = statistics.fmean(r["target_macs"] for r in rs)
            rec["target_macs"] = target
            # the seed farthest from its target, either way
            ratios = [r["macs"] / r["target_macs"] for r in rs]
            rec["macs_vs_target"] = max(ratios, key=lambda x: abs(x - 1.0))
        if "prefix_budget" in rs[0]:
            rec["prefix_budget"] = [r["prefix_budget"] for r in rs]
        out.append(rec)
    return out


def checks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, on the aggregated rows."""
    dense = next((r for r in rows if r["arm"] == "dense"), None)
    out: dict[str, Any] = {"swan_at_25pct": {"row": None, "met": False}}
    swan = [r for r in rows if r["arm"].startswith("swan") and r["of_dense"] <= 0.25 + 1e-9]
    if dense is not None and swan:
        best = max(swan, key=lambda r: r["success_mean"])
        gap = best["success_mean"] - dense["success_mean"]
        out["swan_at_25pct"] = {
            "row": f"{best['arm']} {best['level']:g}",
            "of_dense": best["of_dense"],
            "gap_vs_dense": gap,
            "met": gap >= -0.03 - 1e-9,
        }
    ahead = []
    for r in rows:
        if r["arm"] not in ("swan-ladder", "swan-ladder-ft"):
            continue
        for other in ("pruned", "scratch"):
            o = next((x for x in rows if x["arm"] == other and x["level"] == r["level"]), None)
            if o is not None:
                ahead.append(
                    {
                        "level": r["level"],
                        "swan_arm": r["arm"],
                        "vs": other,
                        "swan": r["success_mean"],
                        "other": o["success_mean"],
                        "ahead": r["success_mean"] > o["success_mean"],
                    }
                )
    out["ladder_ahead"] = ahead
    # the target: at every (level, baseline) pair, some compact SWAN level is ahead
    pairs = {(a["level"], a["vs"]) for a in ahead}
    out["ladder_ahead_everywhere"] = bool(pairs) and all(
        any(a["ahead"] for a in ahead if (a["level"], a["vs"]) == p) for p in pairs
    )
    # the one model with dynamic gates at the level's budget, where its executed MACs
    # per step are within 5% of (or below) the static arm's: the same question for
    # SWAN as deployed with its gates (sparse mode) rather than as level graphs
    dynamic = []
    for r in rows:
        if r["arm"] != "swan-dynamic" or r["level"] is None or r["level"] >= 1.0:
            continue
        for other in ("pruned", "scratch"):
            o = next((x for x in rows if x["arm"] == other and x["level"] == r["level"]), None)
            if o is None:
                continue
            dynamic.append(
                {
                    "level": r["level"],
                    "vs": other,
                    "swan": r["success_mean"],
                    "other": o["success_mean"],
                    "macs_ratio": r["macs"] / o["macs"],
                    "matched": r["macs"] <= 1.05 * o["macs"],
                    "ahead": r["success_mean"] > o["success_mean"],
                }
            )
    out["dynamic_ahead"] = dynamic
    out["dynamic_ahead_everywhere"] = bool(dynamic) and all(
        d["ahead"] and d["matched"] for d in dynamic
    )
    return out


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| arm | level | success (mean ± std) | per seed | MMACs/step | of dense | samples seen |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        level = "-" if r["level"] is None else f"{r['level']:g}"
        if r.get("prefix_budget") and r["prefix_budget"] != [r["level"]] * len(r["prefix_budget"]):
            level += " (prefix " + "/".join(f"{b:.3g}" for b in r["prefix_budget"]) + ")"
        per = "/".join(f"{100 * s:.0f}" for s in r["success_per_seed"])
        lines.append(
            f"| {r['arm']} | {level} | {r['success_mean']:.1%} ± {r['success_std']:.1%} | "
            f"{per} | {r['macs'] / 1e6:.3f} | {r['of_dense']:.1%} | {r['samples']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = {
        "swan-dynamic": "o-",
        "swan-ladder": "s-",
        "swan-adaptive": "*",
        "swan-ladder-ft": "s--",
        "dense": "D",
        "scratch": "^--",
        "pruned": "v--",
        "pruned-noft": "x:",
        "slimmable": "P-.",
    }
    for arm, style in styles.items():
        rs = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["macs"])
        if not rs:
            continue
        ax.errorbar(
            [100 * r["of_dense"] for r in rs],
            [100 * r["success_mean"] for r in rs],
            yerr=[100 * r["success_std"] for r in rs],
            fmt=style,
            capsize=3,
            markersize=8 if arm == "swan-adaptive" else 5,
            label=arm,
        )
    ax.set_xscale("log")
    ax.set_xlabel("MACs per step (% of the dense full-width policy, log scale)")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def make_result(meta: dict[str, Any], per_seed: list[list[dict[str, Any]]]) -> dict[str, Any]:
    rows = aggregate(per_seed, meta["seeds"])
    return {**meta, "rows": rows, "checks": checks(rows), "per_seed": per_seed}


MERGE_KEYS = ("episodes", "eval_seed", "levels")  # what a kept row was evaluated with


def check_merge(out_json: Path, seeds: Sequence[int], settings: dict[str, Any]) -> None:
    """``--merge``: refuse (``SystemExit``) an earlier ``out_json`` whose rows the new ones
    cannot sit beside: other seeds (its other seeds' rows would be dropped), or other
    evaluation ``settings`` (episodes, evaluation seed, levels; a key the file lacks is
    not checked, as in :func:`combined`)."""
    old = json.loads(out_json.read_text())
    if sorted(seeds) != sorted(old["seeds"]):
        raise SystemExit(
            f"error: --merge: {out_json} has seeds {old['seeds']}, this run {list(seeds)}; "
            "merge the same seeds (--combine joins runs of other seeds)"
        )
    for key in MERGE_KEYS:
        if key in old and key in settings and json.dumps(old[key]) != json.dumps(settings[key]):
            raise SystemExit(
                f"error: --merge: {out_json} was evaluated with {key}={old[key]!r}, "
                f"this run with {settings[key]!r}"
            )


def merge_earlier(
    out_json: Path,
    seeds: Sequence[int],
    per_seed: list[list[dict[str, Any]]],
    command: str,
    settings: dict[str, Any] | None = None,
) -> tuple[list[list[dict[str, Any]]], list[str], float]:
    """``--merge``: these arms' new rows replace theirs in the earlier ``out_json``, whose
    other rows stay (:func:`check_merge` first). Returns the per-seed rows, every command
    so far, and their minutes."""
    check_merge(out_json, seeds, settings or {})
    old = json.loads(out_json.read_text())
    old_rows = dict(zip(old["seeds"], old["per_seed"], strict=True))
    arms = {r["arm"] for rows in per_seed for r in rows}
    merged = [
        [r for r in old_rows[s] if r["arm"] not in arms] + rows
        for s, rows in zip(seeds, per_seed, strict=True)
    ]
    return merged, [*old.get("commands", [old["command"]]), command], old.get("minutes", 0.0)


def combined(paths: Sequence[Path], command: str, console: Console) -> dict[str, Any]:
    """One result from several earlier outputs of ``bench_tradeoff.py`` (``--combine``).

    A row that some seeds lack (an arm not yet run there) is averaged over the seeds that
    have it; its ``seeds`` lists them and a warning names it.
    """
    parts = []
    for path in paths:
        try:
            parts.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: --combine: cannot read {path}: {e}") from None
    first = parts[0]
    for key in ("task", "variation", "episodes", "eval_seed", "levels"):
        values = {json.dumps(p[key]) for p in parts if key in p}  # older files lack eval_seed
        if len(values) > 1:
            raise SystemExit(f"error: --combine: the files differ in {key}: {sorted(values)}")
    seeds = [s for p in parts for s in p["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: --combine: a seed appears twice: {seeds}")
    per_seed = [rows for p in parts for rows in p["per_seed"]]
    have = [{(r["arm"], r["level"]) for r in rows} for rows in per_seed]
    for arm, level in sorted(set().union(*have), key=str):
        lack = [s for s, h in zip(seeds, have, strict=True) if (arm, level) not in h]
        if lack:
            console.print(f"[yellow]warning:[/] row {arm} {level} lacks seeds {lack}")
    meta = {key: first[key] for key in ("task", "variation", "episodes")}
    meta["eval_seed"] = next((p["eval_seed"] for p in parts if "eval_seed" in p), None)
    meta |= {
        "seeds": seeds,
        "levels": first["levels"],
        "command": command,
        "commands": [*(c for p in parts for c in p.get("commands", [p["command"]])), command],
        "minutes": sum(p.get("minutes", 0.0) for p in parts),
    }
    return make_result(meta, per_seed)


def write_result(result: dict[str, Any], docs: Path, console: Console) -> dict[str, Any]:
    """``<docs>/tradeoff_<task>.{json,md,png}``; prints the table and the target checks."""
    slug = task_slug(result["task"], result["variation"])
    title = (
        f"{result['task']} (variation {result['variation']}): {len(result['seeds'])} seed(s) x "
        f"{result['episodes']} episodes"
    )
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"tradeoff_{slug}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result["rows"], title)
    (docs / f"tradeoff_{slug}.md").write_text(table)
    plot(result["rows"], docs / f"tradeoff_{slug}.png", title)
    console.print(table)
    console.print(json.dumps(result["checks"], indent=2))
    return result
