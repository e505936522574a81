"""report.md of a field trial: what ran, accuracy, bandwidth, energy, faults and failures.

Vocabulary: rounds by their 0-based index (as in metrics.jsonl and the fault config), traffic in
MB (10^6 B), memory in MiB (2^20 B), head names R, U/<m>, S/<combination>.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from edge.records import StrategyBlock, SummaryDoc
from edge.summary import round_ranges


def _fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def render_report(doc: SummaryDoc) -> str:
    """Render the markdown report of a trial's summary document."""
    trial = doc["trial"]
    name = trial["strategy"]
    block = doc["strategies"][name]
    out: list[str] = [f"# Field trial: {doc['fleet']}", ""]
    status = trial["status"]
    headline = f"**{status}** after {trial['wall_s']:.1f} s (exit status {trial['exit_code']})"
    if trial.get("reason"):
        headline += f": {trial['reason']}"
    out += [headline, ""]
    out += _header(doc, trial)
    out += _what_ran(doc, trial, block)
    out += _startup(trial)
    out += _accuracy(doc, block)
    out += _bandwidth(block, trial)
    out += _field(trial)
    out += _energy(doc, block)
    out += _faults(trial, block)
    out += _failures(trial)
    out += _plots(trial)
    return "\n".join(out).rstrip() + "\n"


def _header(doc: SummaryDoc, trial: dict[str, Any]) -> list[str]:
    host = trial.get("host") or {}
    where = (f"{host.get('hostname', '?')} ({host.get('system', '?')}, {host.get('machine', '?')}, "
             f"{host.get('cpus', '?')} CPUs"
             + (f", {host['board_model']}" if host.get("board_model") else "") + ")")
    return [f"Ran {trial.get('started_utc') or '?'} (UTC) on {where} with parse-edge "
            f"{doc['software_version']} (Python {host.get('python', '?')}); broker "
            f"{trial['broker']['url']} ({trial['broker']['kind']}). Rounds are numbered by their "
            "index, 0 to R-1, as in metrics.jsonl and the fault config; traffic is in MB (10^6 B), "
            "memory in MiB (2^20 B).", ""]


def _devices(doc: SummaryDoc, trial: dict[str, Any]) -> str:
    devices = Counter(a["device"] for a in doc["agents"].values())
    text = ", ".join(f"{n} x {d}" for d, n in devices.items())
    emulated = trial.get("emulated_devices") or []
    if emulated:
        host = trial.get("host") or {}
        text += (f" (emulated on this {host.get('machine', '?')} host: {', '.join(emulated)} profiles "
                 "give the energy estimates, the speed is this host's)")
    return text


def _what_ran(doc: SummaryDoc, trial: dict[str, Any], block: StrategyBlock) -> list[str]:
    kinds = Counter(a["kind"] for a in doc["agents"].values())
    rows = [
        ["config", doc["config"]],
        ["data set", doc["dataset"]],
        ["strategy", f"{trial['strategy']} ({block['arch']})"],
        ["agents", f"{len(doc['agents'])}: " + ", ".join(f"{n} x {k}" for k, n in kinds.items())],
        ["devices", _devices(doc, trial)],
        ["rounds", f"{block['rounds']} reached of {trial['rounds_planned']} planned "
                   f"(0-{trial['rounds_planned'] - 1})"],
        ["quorum", f"{trial.get('quorum', '?')} agents online before round 0"],
        ["agent processes", trial.get("launcher") or "?"],
        ["topology", trial["topology"]],
        ["codec", trial["codec"]],
        ["round deadline", f"{trial['deadline_s']:g} s"],
        ["broker", f"{trial['broker']['url']} ({trial['broker']['kind']})"],
        ["security", _security(trial.get("security") or {})],
        ["seed", doc["seed"]],
        ["software", doc["software_version"]],
    ]
    return ["## What ran", "", *_table(["item", "value"], rows)]


def _security(sec: dict[str, Any]) -> str:
    """One cell: signed or not, the run id, how the runner logged in, what its own view rejected."""
    if not sec:
        return "?"
    parts = ["messages signed (HMAC-SHA256, per-agent keys from the fleet key)" if sec.get("signed")
             else "messages NOT signed (no fleet key named in broker.credentials / key_file)",
             f"run {sec.get('run_id', '?')}", f"runner logged in as {sec.get('login') or 'anonymous'}",
             "TLS" if sec.get("tls") else "no TLS"]
    rejected = sec.get("runner_rejected") or {}
    if rejected:
        parts.append("the runner's view rejected "
                     + ", ".join(f"{k} {n}" for k, n in sorted(rejected.items())))
    return "; ".join(parts)


def _startup(trial: dict[str, Any]) -> list[str]:
    start = trial.get("startup") or {}
    if not start.get("agents_launched"):
        return []

    def at(key: str) -> str:
        value = start.get(key)
        return "not reached" if value is None else f"{value:.1f} s"
    n = start["agents_launched"]
    first = (f"the fork server, which forked the {n} agents" if start.get("launcher") == "fork server"
             else f"the first of {n} agent processes ({start.get('launcher', '?')})")
    return ["## Start-up", "",
            f"Timed from the first process started ({first}): all agents started "
            f"{at('launched_s')}, all connected {at('connected_s')}, quorum reached (first agent in "
            f"round 0) {at('quorum_s')}, every agent in round 0 {at('round0_s')}.", ""]


def _accuracy(doc: SummaryDoc, block: StrategyBlock) -> list[str]:
    acc = block["accuracy"]
    kinds = Counter(a["kind"] for a in doc["agents"].values())
    out = ["## Accuracy", "",
           "Test accuracy of each agent's final model (after its last round's local training), "
           "averaged by agent kind.", ""]
    out += _table(["kind", "agents", "accuracy"],
                  [[k, kinds.get(k, 0), v] for k, v in acc["by_kind"].items()]
                  + [["**overall**", len(acc["per_agent"]), acc["overall"]]])
    res = block["agents"]
    out += ["Per agent: rounds trained, rounds missed (away, or skipped to rejoin the fleet at its "
            "round) and rounds trained without any neighbour's update (it expected some).", ""]
    out += _table(["agent", "kind", "device", "trained", "missed", "alone", "accuracy", "exit",
                   "restarts"],
                  [[a, info["kind"], info["device"], res[a].get("rounds_trained", res[a]["rounds_completed"]),
                    _rounds(res[a].get("rounds_missed")), _rounds(res[a].get("rounds_alone")),
                    acc["per_agent"].get(a), res[a]["exit"], len(res[a]["restarts"])]
                   for a, info in doc["agents"].items()])
    if block.get("per_head"):
        out += ["Per head (mean over the agents that have it):", ""]
        out += _table(["head", "accuracy"], [[h, v] for h, v in block["per_head"].items()])
    history = block.get("history", [])
    if history:
        kinds_order = list(acc["by_kind"])
        out += ["Accuracy per round:", ""]
        out += _table(["round", "overall", *kinds_order],
                      [[h["round"], h["overall"], *[h["by_kind"].get(k) for k in kinds_order]]
                       for h in history])
    return out


def _rounds(rounds: list[int] | None) -> str:
    """Show a count with the round indices: "2 (4-5)", "0"."""
    return f"{len(rounds)} ({round_ranges(rounds)})" if rounds else "0"


def _bandwidth(block: StrategyBlock, trial: dict[str, Any]) -> list[str]:
    res = block["agents"]
    sent, received = block["bytes_sent"], block["bytes_received"]
    later = sent.get("per_round_after_0")  # absent from summaries written before it existed
    steady = (f"; {_mb(later)} MB per round after round 0, which also carries each agent's "
              "start-up publish probe (one full chunk, up to 256 KiB: broker/probe.py) and first "
              "publish; the last round publishes no update" if later is not None else "")
    out = ["## Bandwidth", "",
           f"Bytes on the wire (MQTT payload + header, all topics) measured by each agent: "
           f"{_mb(sent['total'])} MB sent, {_mb(received['total'])} MB received "
           f"({_mb(sent['per_round'])} MB sent per round over all rounds{steady}). Dense fp32 "
           f"size of the published branches: {_mb(block['bytes_dense']['per_round'])} MB per "
           "round.", ""]
    rows = []
    for agent, r in res.items():
        b = r["bytes"]
        update = b.get("update_bytes")
        rows.append([agent, _mb(b["sent"]), _mb(b["received"]), f"{b['wire_per_round'] / 1e3:.1f}",
                     f"{update / 1e3:.1f}" if update else None, b.get("wire_per_round_over_update"),
                     f"{r['dense_bytes_per_round'] / 1e3:.1f}"])
    out += ["Per agent: wire kB per round (sent + received, all topics) against its encoded update "
            "(one round's publish of its branches, headers included); dense = fp32 size before the "
            "codec.", ""]
    out += _table(["agent", "MB sent", "MB received", "wire kB / round", "update kB",
                   "wire / update", "dense kB"], rows)
    branches: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in res.values():
        for branch, counts in (r["bytes"].get("per_branch") or {}).items():
            for key, value in (counts or {}).items():
                if isinstance(value, (int, float)):
                    branches[branch][key] += value
    if branches:
        keys = sorted({k for c in branches.values() for k in c})
        out += ["Per branch (summed over agents, from their final.json):", ""]
        out += _table(["branch", *keys], [[b, *[int(c.get(k, 0)) for k in keys]]
                                          for b, c in sorted(branches.items())])
    rejected: dict[str, int] = defaultdict(int)
    for r in res.values():
        for reason, count in (r.get("rejected") or {}).items():
            rejected[reason] += int(count)
    if rejected:
        out += ["Messages rejected by receivers (updates that never reached a model; statuses, "
                "metrics and control messages that changed nothing; see docs/security.md): "
                + ", ".join(f"{reason} {n}" for reason, n in sorted(rejected.items())) + ".", ""]
    cov = trial.get("mix_coverage") or {}
    if cov.get("expected"):
        out += [f"Mix coverage: {cov['mixed']} of {cov['expected']} expected neighbour updates were "
                f"mixed ({100 * cov['overall']:.1f}%); a missing one was late, lost or its sender "
                f"was away. MQTT metrics rows received by the runner: "
                f"{trial['metrics_rows_over_mqtt']} of {trial['metrics_rows']} written.", ""]
    return out


def _energy(doc: SummaryDoc, block: StrategyBlock) -> list[str]:
    res = block["agents"]
    out = ["## Energy and resources", "",
           "Energy is `measured:<backend>:<sensor>` where the board exposes a power sensor, else "
           "`estimated:<profile>`. The estimate is split into the idle baseline (profile idle "
           "power x wall time) and the attributable part: compute (the agent's CPU seconds, scaled "
           "to the board's core speed, x the profile's per-core active power) and radio (bytes x "
           "J/B). Attributable energy is what the learning cost; unlike the idle baseline it does "
           "not grow with run length or other load on the host. Counters continue across agent "
           "restarts.", ""]
    out += _table(["agent", "device", "energy J", "source", "idle J", "compute J", "radio J",
                   "attributable J", "J / round", "J / MB sent"],
                  [[a, doc["agents"][a]["device"], r["energy_j"], r["energy_source"],
                    r.get("idle_j"), r.get("compute_j"), r.get("radio_j"), r.get("attributable_j"),
                    r.get("energy_j_per_round"), r.get("energy_j_per_mb_sent")]
                   for a, r in res.items()])
    total = sum(r["energy_j"] or 0.0 for r in res.values())
    attributable = sum(r.get("attributable_j") or 0.0 for r in res.values())
    out += [f"Fleet energy: {total:.1f} J, of which {attributable:.1f} J attributable to the "
            "learning (compute + radio).", ""]
    out += ["Memory: peak RSS counts every page mapped into the agent's process, shared library "
            "pages included; USS only the pages it alone holds (what a board pays per agent when "
            "agents share a fork server), PSS shares each shared page out among its users.", ""]
    out += _table(["agent", "CPU s", "training s", "restarts", "peak RSS MiB", "peak USS MiB",
                   "peak PSS MiB"],
                  [[a, r["cpu_s"], r["train_s"], r.get("restarts_counted", 0),
                    f"{r['peak_rss_mb']:.0f}", f"{r.get('peak_uss_mib', 0.0):.0f}",
                    f"{r.get('peak_pss_mib', 0.0):.0f}"] for a, r in res.items()])
    return out


def _faults(trial: dict[str, Any], block: StrategyBlock) -> list[str]:
    out = ["## Faults injected and what happened", ""]
    faults = trial.get("faults", [])
    field_faults = (trial.get("field") or {}).get("faults") or []
    if not faults and field_faults:
        out += [f"No faults in the fleet config; the field file's {len(field_faults)} link "
                "fault(s) are in the Virtual field section above (and in the timeline).", ""]
    elif not faults:
        out += ["No faults were configured.", ""]
    else:
        rows = []
        for f in faults:
            if f["kind"] == "leave":
                when = f"round {f['round']}" + (f", back at {f['return_round']}"
                                                if f["return_round"] is not None else ", never back")
                who = f["agent"]
            elif f["kind"] == "broker-restart":
                when, who = f"round {f['round']}", "broker"
            else:
                when = "every round"
                who = ", ".join(f["agents"])
            rows.append([f["kind"], when, who, f["status"], f["outcome"] or f["note"]])
        out += _table(["fault", "when", "who", "status", "what happened"], rows)
    restarts = [(a, r) for a, info in block["agents"].items() for r in info["restarts"]]
    if restarts:
        out += ["Agents killed by a signal the runner did not send, and restarted:", ""]
        out += _table(["agent", "at s", "signal", "after round", "resumed at round"],
                      [[a, f"{r['t_s']:.1f}", r["signal"], r["after_round"], r.get("resumed_at_round")]
                       for a, r in restarts])
    events = [e for e in trial.get("events", []) if e["kind"] != "finished"]
    if events:
        out += ["Timeline:", ""]
        out += [f"- {e['t_s']:.1f} s  {e['kind']}{' ' + e['agent'] if e['agent'] else ''}: "
                f"{e['detail'].splitlines()[0] if e['detail'] else ''}" for e in events]
        out += [""]
    return out


def _kbit(rate: float | None) -> str:
    return "uncapped" if rate is None else f"{rate:g} kbit/s"


def _field(trial: dict[str, Any]) -> list[str]:
    """The virtual field: per board its link and the bytes the OS counted beside MQTT's."""
    info = trial.get("field")
    if not info:
        return []
    sites = ", ".join(f"{name} ({len(s['boards'])} boards, broker {s['broker']}, backhaul "
                      f"{_kbit(s['backhaul']['rate_kbit'])})" for name, s in info["sites"].items())
    out = ["## Virtual field", "",
           f"Field `{info['name']}` ({info['source']}): sites {sites}; hub {info['hub']}. Every "
           "board is a network namespace flashed over SSH; rate caps (tc tbf), loss (nftables) and "
           "link outages are real, delay and jitter are not (no netem).", "",
           "Bytes the OS counted on each board's eth0 over its agent's life, beside the MQTT "
           f"layer's counters. {info['protocol_overhead']}.", ""]
    rows = []
    for board, b in info["boards"].items():
        link = b["link"]
        iface, mqtt = b.get("interface") or {}, b.get("mqtt") or {}
        tx, rx = b.get("tx") or {}, b.get("rx") or {}
        rows.append([board, b["site"], _kbit(link["rate_kbit"]), f"{link['loss_percent']:g}%",
                     _mb(iface["tx_bytes"]) if iface else "-",
                     _mb(mqtt["sent_bytes"]) if mqtt else "-",
                     f"{tx['overhead_ratio']:.3f}" if tx.get("overhead_ratio") else "-",
                     _mb(iface["rx_bytes"]) if iface else "-",
                     _mb(mqtt["received_bytes"]) if mqtt else "-",
                     f"{rx['overhead_ratio']:.3f}" if rx.get("overhead_ratio") else "-",
                     _rounds(b["missed_mix_rounds"]) if b["missed_mix_rounds"] else "none"])
    out += _table(["board", "site", "rate", "loss", "eth0 tx MB", "MQTT sent MB", "tx/MQTT",
                   "eth0 rx MB", "MQTT recv MB", "rx/MQTT", "missed mixes (rounds)"], rows)
    faults = info.get("faults") or []
    if faults:
        out += ["Faults of the field file. A link outage of rounds r-(u-1) keeps the board out of "
                "the exchanges mixed in those rounds: its port goes down once every agent reported "
                "round r-2 (before round r-1's updates are sent) and comes back as the fleet "
                "enters round u; a reboot kills the board's agent as it enters its round (its "
                "supervisor restarts it).", ""]
        out += _table(["fault", "target", "rounds", "status", "what happened"],
                      [[f["kind"], f["target"],
                        f"{f['round']}-{f['up_round'] - 1}" if f["up_round"] is not None
                        else f"{f['round']}", f["status"], f["outcome"] or f["note"]]
                       for f in faults])
    return out


def _failures(trial: dict[str, Any]) -> list[str]:
    failed = trial.get("failed_agents", [])
    if not failed:
        return []
    out = ["## Failed agents", ""]
    for f in failed:
        out += [f"### {f['agent']} ({f['exit']}, exit status {f['returncode']})", "", "```",
                *f["log_tail"], "```", ""]
    return out


def _plots(trial: dict[str, Any]) -> list[str]:
    plots = trial.get("plots") or {}
    if not plots:
        return [trial["plots_error"], ""] if trial.get("plots_error") else []
    titles = {"accuracy": "Accuracy per round by agent kind (mean, min-max band)",
              "bytes": "Cumulative MB on the wire per agent, by agent kind", "energy": "Energy per agent",
              "field_bytes": "MB on each board's eth0 beside the MQTT layer's"}
    out = ["## Plots", ""]
    for key, path in plots.items():
        out += [f"![{titles.get(key, key)}]({path})", ""]
    return out
