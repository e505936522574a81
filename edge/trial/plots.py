"""PNG plots of a trial: accuracy per round by agent kind, cumulative MB per agent, energy per agent.

matplotlib (the `report` extra) is imported here only, with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from edge.records import MetricsRow, SummaryDoc


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_by_kind(rows: list[MetricsRow]) -> dict[str, list[tuple[int, float]]]:
    """Kind -> [(round, mean accuracy of that kind's agents in the round)]."""
    cells: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        cells[str(row.get("kind", "?"))][int(row["round"])][row["agent"]] = float(row["accuracy"])
    return {k: [(r, sum(v.values()) / len(v)) for r, v in sorted(by_round.items())]
            for k, by_round in sorted(cells.items())}


def cumulative_mb(rows: list[MetricsRow]) -> dict[str, list[tuple[int, float]]]:
    """Agent -> [(round, MB sent + received so far)], restarts of the process included."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    offset: dict[str, float] = defaultdict(float)
    last: dict[str, float] = defaultdict(float)
    for row in rows:
        agent = row["agent"]
        value = float(row.get("bytes_sent", 0)) + float(row.get("bytes_received", 0))
        if value < last[agent]:  # the process restarted and counts from zero
            offset[agent] += last[agent]
        last[agent] = value
        out[agent].append((int(row["round"]), (offset[agent] + value) / 1e6))
    return dict(sorted(out.items()))


def write_plots(doc: SummaryDoc, rows: list[MetricsRow], folder: Path) -> dict[str, Path]:
    """Write the three PNGs into `folder`; returns name -> path."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{doc['fleet']} ({doc['trial']['strategy']}, {doc['trial']['codec']})"
    paths = {}

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for kind, points in accuracy_by_kind(rows).items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=kind)
    # Round indices as in metrics.jsonl and the fault config (0-based).
    ax.set(xlabel="round index", ylabel="test accuracy", title=f"Accuracy by agent kind: {title}")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    paths["accuracy"] = _save(plt, fig, folder / "accuracy.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for agent, points in cumulative_mb(rows).items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=agent)
    ax.set(xlabel="round index", ylabel="MB on the wire (sent + received)",
           title=f"Cumulative MB per agent: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    paths["bytes"] = _save(plt, fig, folder / "cumulative_mb.png")

    agents = doc["strategies"][doc["trial"]["strategy"]]["agents"]
    names = list(agents)
    energy = [agents[a]["energy_j"] or 0.0 for a in names]
    sources = sorted({str(agents[a]["energy_source"]) for a in names})
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.bar(names, energy, color="tab:orange")
    ax.set(xlabel="agent", ylabel="energy (J)", title=f"Energy per agent ({', '.join(sources)})")
    ax.grid(alpha=0.3, axis="y")
    paths["energy"] = _save(plt, fig, folder / "energy.png")
    return paths


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
