"""The fission model: slice shapes, fusion operators, combiners, missing-modality inference."""

from __future__ import annotations

import pytest
import torch

from edge.config.schema import FamilyConfig
from edge.learning.model import AgentModel, ModelSpec, slice_widths

MLP = FamilyConfig(kind="mlp", hidden=(16,), latent=12)
CONV = FamilyConfig(kind="conv1d", hidden=(8, 8), latent=12, kernel=3)
SHAPES = {"a": (10,), "b": (6,), "w": (3, 20)}


def _spec(mods: tuple[str, ...], **kw: object) -> ModelSpec:
    families = {"a": MLP, "b": MLP, "w": CONV}
    return ModelSpec(modalities=mods, input_shapes={m: SHAPES[m] for m in mods},
                     families=families, n_classes=5, **kw)  # type: ignore[arg-type]


def _batch(mods: tuple[str, ...], n: int = 7) -> dict[str, torch.Tensor]:
    return {m: torch.randn(n, *SHAPES[m]) for m in mods}


@pytest.mark.parametrize("split", [(1, 1, 1), (2, 1, 1), (1, 2, 3), (3, 1, 1), (1, 1, 4)])
@pytest.mark.parametrize("mods", [("a",), ("w",), ("a", "b"), ("a", "w")])
def test_slice_shapes_follow_the_split_ratio(split: tuple[float, ...], mods: tuple[str, ...]) -> None:
    # Prepare
    model = AgentModel(_spec(mods, split=tuple(float(s) for s in split)))
    r_width, u_width, s_width = slice_widths(12, tuple(float(s) for s in split))
    # Execute
    out = model(_batch(mods))
    # Assert
    for m in mods:
        sl = out.slices[m]
        assert sl.r.shape == (7, r_width) and sl.u.shape == (7, u_width)
        assert (sl.s is None) == (len(mods) == 1)
        if sl.s is not None:
            assert sl.s.shape == (7, s_width)
    assert out.logits.shape == (7, 5)


@pytest.mark.parametrize("fusion", ["concat", "sum", "gated", "tensor"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "gate", "fusion"])
def test_every_fusion_and_combiner_trains_a_step(fusion: str, combiner: str) -> None:
    # Prepare: a seeded batch large enough that some fused units are active (ReLU)
    torch.manual_seed(1)
    model = AgentModel(_spec(("a", "b"), fusion=fusion, combiner=combiner))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = _batch(("a", "b"), n=64), torch.randint(0, 5, (64,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Execute
    loss = torch.nn.functional.cross_entropy(model(x).logits, y)
    loss.backward()
    opt.step()
    # Assert: the fusion parameters receive gradient (the synergy path is wired in)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("fusion.") for n in changed)
    assert model(x).head_logits.keys() == {"R", "U_a", "U_b", "S"}


def test_sum_combiner_is_the_sum_of_head_logits_and_mean_its_mean() -> None:
    # Prepare
    torch.manual_seed(0)
    model = AgentModel(_spec(("a", "b")))
    mean_model = AgentModel(_spec(("a", "b"), combiner="mean"))
    mean_model.load_state_dict(model.state_dict())
    x = _batch(("a", "b"))
    # Execute
    out, out_mean = model(x), mean_model(x)
    # Assert
    total = sum(out.head_logits.values())
    assert torch.allclose(out.logits, total, atol=1e-6)
    assert torch.allclose(out_mean.logits, total / 4, atol=1e-6)


@pytest.mark.parametrize("combiner", ["sum", "mean", "gate", "fusion"])
def test_missing_modality_drops_its_heads_and_the_synergy_head(combiner: str) -> None:
    # Prepare
    model = AgentModel(_spec(("a", "w"), combiner=combiner)).eval()
    # Execute
    only_a = model(_batch(("a",)))
    only_w = model(_batch(("w",)))
    # Assert
    assert only_a.head_logits.keys() == {"R", "U_a"}
    assert only_w.head_logits.keys() == {"R", "U_w"}
    assert only_a.logits.shape == only_w.logits.shape == (7, 5)
    assert torch.isfinite(only_a.logits).all()


def test_missing_modality_prediction_uses_only_the_present_heads() -> None:
    # Prepare
    model = AgentModel(_spec(("a", "b"))).eval()
    x = _batch(("a",))
    # Execute
    out = model(x)
    # Assert: with the sum combiner the prediction is exactly R + U_a
    assert torch.allclose(out.logits, out.head_logits["R"] + out.head_logits["U_a"], atol=1e-6)


@pytest.mark.parametrize("arch", ["plain", "shared"])
def test_plain_architectures_serve_any_subset(arch: str) -> None:
    # Prepare
    model = AgentModel(_spec(("a", "w"), arch=arch)).eval()
    # Execute
    both, one = model(_batch(("a", "w"))), model(_batch(("w",)))
    # Assert
    assert both.logits.shape == one.logits.shape == (7, 5)
    assert both.head_logits.keys() == {"late"} and not both.slices


def test_redundant_width_is_fleet_wide_even_with_different_latents() -> None:
    # Prepare: b's family is wider, but H_R must have one shape on every agent
    families = {"a": MLP, "b": FamilyConfig(kind="mlp", hidden=(16,), latent=30)}
    only_a = ModelSpec(("a",), {"a": (10,)}, families, 5)
    only_b = ModelSpec(("b",), {"b": (6,)}, families, 5)
    # Execute
    head_a = AgentModel(only_a).heads["R"].weight.shape
    head_b = AgentModel(only_b).heads["R"].weight.shape
    # Assert
    assert head_a == head_b == (5, 4)


def test_unit_of_maps_every_parameter_to_its_sharing_unit() -> None:
    # Prepare
    model = AgentModel(_spec(("a", "b"), combiner="gate"))
    # Execute
    units = {n: model.unit_of(n) for n, _ in model.named_parameters()}
    # Assert
    assert units["encoders.a.trunk.1.weight"] == ("enc", "a")
    assert units["encoders.b.proj_r.bias"] == ("enc", "b")
    assert units["encoders.b.proj_s.weight"] == ("syn", "b")
    assert units["fusion.mix.weight"] == ("fuse", "")
    assert units["heads.U_a.weight"] == ("head_u", "a")
    assert units["heads.R.weight"] == ("head_r", "")
    assert units["heads.S.bias"] == ("head_s", "")
    assert units["combiner.gate_logits"] == ("comb", "")


def test_head_hidden_gives_every_slice_head_a_hidden_layer() -> None:
    # Prepare
    model = AgentModel(_spec(("a", "b"), head_hidden=20))
    # Execute
    out = model(_batch(("a", "b")))
    # Assert
    for name in ("R", "U_a", "U_b", "S"):
        head = model.heads[name]
        assert isinstance(head, torch.nn.Sequential) and head[0].out_features == 20
    assert out.logits.shape == (7, 5)
