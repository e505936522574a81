"""PNG plots of a trial: accuracy and traffic by agent kind over rounds, energy per agent.

Accuracy per round by agent kind (mean and the spread of its agents), cumulative traffic by agent
kind, energy per agent. Every plot over rounds marks the faults and events (an agent leaving,
rejoining, killed and restarted; the broker restarting).

Rounds are the 0-based index of metrics.jsonl; traffic is MB (10^6 B). matplotlib (the `report`
extra) is imported here only, with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from edge.records import MetricsRow, SummaryDoc


class Band(NamedTuple):
    """One kind's value per round: mean over its agents, and the lowest and highest agent."""

    rounds: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]


class Marker(NamedTuple):
    """A vertical mark on a round axis."""

    round: float
    label: str
    color: str


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(cells: dict[int, list[float]]) -> Band:
    rounds = sorted(cells)
    return Band(rounds, [sum(cells[r]) / len(cells[r]) for r in rounds],
                [min(cells[r]) for r in rounds], [max(cells[r]) for r in rounds])


def accuracy_by_kind(rows: list[MetricsRow]) -> dict[str, Band]:
    """Map kind -> per round: mean, lowest and highest accuracy of that kind's agents.

    An agent's later row counts for a round it ran twice.
    """
    cells: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        cells[str(row.get("kind", "?"))][int(row["round"])][row["agent"]] = float(row["accuracy"])
    return {k: _band({r: list(v.values()) for r, v in by_round.items()})
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


def cumulative_mb_by_kind(rows: list[MetricsRow]) -> dict[str, Band]:
    """Kind -> per round: mean, lowest and highest cumulative MB of that kind's agents."""
    kind_of = {row["agent"]: str(row.get("kind", "?")) for row in rows}
    cells: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for agent, points in cumulative_mb(rows).items():
        for round_idx, mb in dict(points).items():   # the later value of a round run twice
            cells[kind_of[agent]][round_idx].append(mb)
    return {k: _band(by_round) for k, by_round in sorted(cells.items())}


def markers(doc: SummaryDoc) -> list[Marker]:
    """List the faults and events to mark on the round axis.

    Leave (at its round), rejoin (the round the agent joined at), broker restart, an agent killed
    and restarted (after the round it had reported).
    """
    trial = doc["trial"]
    out: list[Marker] = []
    for f in trial.get("faults", []):
        if f["status"] != "injected":
            continue
        if f["kind"] == "leave":
            out.append(Marker(f["round"] - 0.5, f"{f['agent']} leaves", "tab:red"))
            back = f.get("resumed_at_round")
            if back is not None:
                out.append(Marker(back - 0.5, f"{f['agent']} rejoins", "tab:green"))
        elif f["kind"] == "broker-restart":
            out.append(Marker(f["round"] - 0.5, "broker restart", "tab:purple"))
    agents = doc["strategies"][trial["strategy"]].get("agents", {})
    for agent, info in agents.items():
        for restart in info.get("restarts", []):
            out.append(Marker(restart["after_round"] + 0.5, f"{agent} killed", "tab:brown"))
    return out


def _mark(ax: Any, marks: list[Marker]) -> None:
    top = ax.get_ylim()[1]
    for i, m in enumerate(marks):
        ax.axvline(m.round, color=m.color, linestyle="--", linewidth=1, alpha=0.8)
        ax.text(m.round, top, f" {m.label}", color=m.color, fontsize="x-small", rotation=90,
                va="top", ha="right" if i % 2 else "left")


def _bands(ax: Any, bands: dict[str, Band]) -> None:
    for kind, band in bands.items():
        line = ax.plot(band.rounds, band.mean, marker="o", markersize=3, label=kind)[0]
        ax.fill_between(band.rounds, band.low, band.high, color=line.get_color(), alpha=0.2,
                        linewidth=0)


def write_plots(doc: SummaryDoc, rows: list[MetricsRow], folder: Path) -> dict[str, Path]:
    """Write the three PNGs into `folder`; returns name -> path."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    title = f"{doc['fleet']} ({doc['trial']['strategy']}, {doc['trial']['codec']})"
    marks = markers(doc)
    paths = {}

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    _bands(ax, accuracy_by_kind(rows))
    ax.set(xlabel="round (index, as in metrics.jsonl)", ylabel="test accuracy (line: mean, band: min-max)")
    ax.set_title(f"Accuracy by agent kind: {title}", fontsize="medium")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    _mark(ax, marks)
    paths["accuracy"] = _save(plt, fig, folder / "accuracy.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    _bands(ax, cumulative_mb_by_kind(rows))
    ax.set(xlabel="round (index, as in metrics.jsonl)",
           ylabel="MB (10^6 B) sent + received per agent\n(line: mean, band: min-max)")
    ax.set_title(f"Cumulative traffic by agent kind: {title}", fontsize="medium")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    _mark(ax, marks)
    paths["bytes"] = _save(plt, fig, folder / "cumulative_mb.png")

    agents = doc["strategies"][doc["trial"]["strategy"]]["agents"]
    paths["energy"] = _energy_plot(plt, agents, doc, folder / "energy.png")
    field = doc["trial"].get("field")
    if field:
        paths["field_bytes"] = _field_bytes_plot(plt, field, doc, folder / "field_bytes.png")
    return paths


def _field_bytes_plot(plt: Any, field: dict[str, Any], doc: SummaryDoc, path: Path) -> Path:
    """Per board of a virtual field: MB its eth0 counted beside its MQTT layer's, each way."""
    boards = [b for b, v in field["boards"].items() if v.get("interface") and v.get("mqtt")]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    width = 0.2
    for k, (label, part, key) in enumerate((("eth0 sent", "interface", "tx_bytes"),
                                            ("MQTT sent", "mqtt", "sent_bytes"),
                                            ("eth0 received", "interface", "rx_bytes"),
                                            ("MQTT received", "mqtt", "received_bytes"))):
        xs = [i + (k - 1.5) * width for i in range(len(boards))]
        ax.bar(xs, [field["boards"][b][part][key] / 1e6 for b in boards], width,
               label=label, color=f"C{k // 2}", alpha=1.0 if part == "interface" else 0.5)
    ax.set_xticks(range(len(boards)), boards)
    ax.set(xlabel="board", ylabel="MB (10^6 B) over the agent's life")
    ax.set_title(f"Bytes on each board's eth0 beside the MQTT layer: {doc['fleet']}",
                 fontsize="medium")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="x-small")
    return _save(plt, fig, path)


def _energy_plot(plt: Any, agents: dict[str, dict[str, Any]], doc: SummaryDoc, path: Path) -> Path:
    """Energy per agent: the estimate stacked as idle baseline, compute and radio (what differs
    between agents is compute and radio, so identical idle bars do not hide it), with a measured
    total drawn over it where a sensor measured; sources in the legend.
    """
    names = list(agents)
    parts = {p: [float(agents[a].get(p) or 0.0) for a in names]
             for p in ("idle_j", "compute_j", "radio_j")}
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    bottom = [0.0] * len(names)
    estimated = sorted({str(agents[a]["energy_source"]) for a in names
                        if str(agents[a]["energy_source"]).startswith("estimated:")})
    label = {"idle_j": "idle baseline", "compute_j": "compute", "radio_j": "radio"}
    for part, colour in (("idle_j", "0.8"), ("compute_j", "C0"), ("radio_j", "C1")):
        ax.bar(names, parts[part], bottom=bottom, color=colour,
               label=f"{label[part]} ({', '.join(estimated) or 'profile estimate'})")
        bottom = [b + v for b, v in zip(bottom, parts[part], strict=True)]
    measured = [(i, float(agents[a]["energy_j"] or 0.0), str(agents[a]["energy_source"]))
                for i, a in enumerate(names)
                if not str(agents[a]["energy_source"]).startswith("estimated:")]
    for source in sorted({s for _, _, s in measured}):
        xs = [i for i, _, s in measured if s == source]
        ys = [v for _, v, s in measured if s == source]
        ax.scatter(xs, ys, marker="_", s=400, color="k", zorder=3, label=f"measured ({source})")
    ax.set(xlabel="agent", ylabel="energy (J)")
    ax.set_title(f"Energy per agent: {doc['fleet']}", fontsize="medium")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="x-small")
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
