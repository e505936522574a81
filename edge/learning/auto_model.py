"""`model.split: auto` and `model.synergy_scope: auto`, resolved once before round 0.

Slice widths change branch signatures and synergy scopes change branch keys, so every agent of
a fleet must build the same ones from round 0 on. Both are therefore fixed **at config time**,
by whoever starts the fleet (`parse-edge simulate`, `parse-edge trial`), from the decentralized
fleet estimate (edge.learning.pid_fleet.fleet_pid: joint counts summed by gossip under shared
k-means centres, no pooled data), and written into the effective config:

- `parse-edge trial`: DIR/config.yaml holds the resolved values, and every agent process is
  started with them (`parse-edge agent --split R,U,S --synergy-scope m=scope,...`), so the agents
  never estimate anything themselves;
- `parse-edge simulate` and `trial`: summary.json's `model` block says what ran and where from.

Rules (edge.learning.pid): widths proportional to mean R : mean U_m : mean S over the held pairs
with a floor of one unit each (`auto_split`), for the smallest latent of the fleet's families and
read as a ratio by the others; s_m is shared by combination when synergy is at least
SYNERGY_SHARE_THRESHOLD of I(Y; A, B) in some held pair containing m, else by modality
(`synergy_scope`). A fleet where no agent holds two modalities has no pair to decompose: auto
gives the equal split, and every s_m (there is none) by combination.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from edge.config.schema import FleetConfig, ModelConfig, ScopeName
from edge.data.fleet_data import AgentData
from edge.learning.pid import auto_split
from edge.learning.pid_fleet import FleetPid, PidOptions, fleet_pid, pairs_held


@dataclass(frozen=True)
class Resolved:
    """What `resolve_model` decided: the config as it runs, and the estimate behind it (or None)."""

    cfg: FleetConfig
    split_auto: bool
    scope_auto: bool
    estimate: FleetPid | None

    def as_dict(self) -> dict[str, Any]:
        """The summary's `model` block: split and scopes as they ran, and where they came from."""
        split = self.cfg.model.split
        assert not isinstance(split, str)
        doc: dict[str, Any] = {
            "split": list(split), "split_from": "auto" if self.split_auto else "config",
            "synergy_scope": self.cfg.model.synergy_scope,
            "synergy_scope_from": "auto" if self.scope_auto else "config",
        }
        if self.estimate is not None:
            doc["pid"] = {"mode": self.estimate.mode, "gossip_steps": self.estimate.gossip_steps,
                          "k": self.estimate.options.k,
                          "pairs": [{"a": p.a, "b": p.b, **p.estimate.point.as_dict()}
                                    for p in self.estimate.pairs]}
        return doc

    def agent_argv(self) -> list[str]:
        """`parse-edge agent` options carrying the resolved values (empty when nothing was auto)."""
        from edge.config.overrides import format_split, format_synergy_scope

        argv: list[str] = []
        split, scope = self.cfg.model.split, self.cfg.model.synergy_scope
        if self.split_auto and not isinstance(split, str):
            argv += ["--split", format_split(split)]
        if self.scope_auto and scope != "auto":
            argv += ["--synergy-scope", format_synergy_scope(scope)]
        return argv

    def config_text(self, text: str) -> str:
        """The config file `text` with the auto values replaced by what they resolved to.

        Unchanged when nothing was auto; else re-written by PyYAML (comments are lost, a comment
        line says what was resolved and from what).
        """
        if not (self.split_auto or self.scope_auto):
            return text
        import yaml

        raw = yaml.safe_load(text)
        model = raw.setdefault("model", {})
        split = self.cfg.model.split
        if self.split_auto and not isinstance(split, str):
            model["split"] = [int(w) if float(w).is_integer() else w for w in split]
        if self.scope_auto:
            scope = self.cfg.model.synergy_scope
            model["synergy_scope"] = dict(scope) if isinstance(scope, dict) else scope
        source = self.estimate.mode if self.estimate else "no modality pair held: equal split"
        what = " and ".join(k for k, auto in (("split", self.split_auto),
                                              ("synergy_scope", self.scope_auto)) if auto)
        note = (f"# model: {what} 'auto' resolved before round 0 from the PID estimate ({source}); "
                f"agents ran with {' '.join(self.agent_argv())}\n")
        return note + yaml.safe_dump(raw, sort_keys=False)


def is_auto(model: ModelConfig) -> bool:
    """True when the model section leaves something to the PID estimate."""
    return model.split == "auto" or model.synergy_scope == "auto"


def resolve_model(cfg: FleetConfig, data: dict[str, AgentData] | None = None,
                  options: PidOptions | None = None,
                  progress: Callable[[str], None] | None = None) -> Resolved:
    """Replace `split: auto` and `synergy_scope: auto` by what the fleet's PID estimate gives.

    Parameters
    ----------
    cfg : FleetConfig
        A validated config; returned unchanged (with `estimate` None) when nothing is auto.
    data : dict, optional
        Every agent's data (edge.data.fleet_data.agent_data), if already loaded.
    options : PidOptions, optional
        Estimator settings; default k = 10 clusters, no bootstrap, the config's seed.
    progress : callable, optional
        Receives one line per step.

    Returns
    -------
    Resolved
        `cfg.model.split` holds the integer widths of the smallest latent (as floats),
        `cfg.model.synergy_scope` a mapping modality -> "combination" | "modality".

    Raises
    ------
    UserError
        When the fleet's topology is not connected (gossip cannot sum the counts).
    """
    model = cfg.model
    if not is_auto(model):
        return Resolved(cfg, False, False, None)
    latent = min(f.latent for f in cfg.families.values())
    estimate = None
    if pairs_held(cfg):
        options = options or PidOptions(k=10, draws=0, seed=cfg.training.seed)
        estimate = fleet_pid(cfg, options, data, progress)
        widths: tuple[int, ...] = estimate.split
        scopes: dict[str, ScopeName] = {m: s.value for m, s in estimate.scopes.items()}
    else:
        widths = auto_split([], latent)
        scopes = {m: "combination" for m in cfg.modalities}
    if model.split == "auto":
        model = replace(model, split=tuple(float(w) for w in widths))
    if model.synergy_scope == "auto":
        model = replace(model, synergy_scope=scopes)
    return Resolved(replace(cfg, model=model), cfg.model.split == "auto",
                    cfg.model.synergy_scope == "auto", estimate)
