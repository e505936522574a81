"""Codec specs: which codec a sender uses per branch, parsed from text or from config fields."""

from __future__ import annotations

from dataclasses import dataclass, replace

from broker.codecs import DEFAULT_BLOCK, DEFAULT_K_FRACTION, CodecId


@dataclass(frozen=True)
class CodecSpec:
    """How a sender encodes one branch.

    `difference` turns on CHOCO-style difference coding (send codec(x - x̂) against the copy x̂ the
    receivers hold); `topk` always implies it, since a sparse absolute parameter vector is useless.
    Keyframes (full updates) use `keyframe_codec`. `stc` (sparse ternary) is sparse like `topk`
    and keeps `k_fraction` of the entries too.
    """

    codec: CodecId = CodecId.FP32
    k_fraction: float = DEFAULT_K_FRACTION
    block_size: int = DEFAULT_BLOCK
    difference: bool = False
    keyframe_codec: CodecId = CodecId.FP32
    error_feedback: bool = True  # False: deltas between true vectors; what a codec drops is lost

    def __str__(self) -> str:
        """Write the spec in `parse_codec_spec` syntax (round-trips)."""
        text = self.codec.name.lower()
        if self.codec in SPARSE:
            text += f":{self.k_fraction:g}"
        elif self.codec is CodecId.INT8 and self.block_size != DEFAULT_BLOCK:
            text += f":{self.block_size}"
        if self.difference and self.codec not in SPARSE:
            text = "choco+" + text
        if self.keyframe_codec is not _default_keyframe(self.codec):
            text += f"/{self.keyframe_codec.name.lower()}"
        if not self.error_feedback:
            text += ",noef"
        return text


# Codecs that send a few entries only: always difference-coded, keyframes dense (fp32 by default).
SPARSE = frozenset({CodecId.TOPK, CodecId.STC})


def _default_keyframe(codec: CodecId) -> CodecId:
    return CodecId.FP32 if codec in SPARSE else codec


def codec_spec(codec: str, topk_fraction: float = DEFAULT_K_FRACTION,
               difference_coding: bool = False, error_feedback: bool = True,
               block_size: int = DEFAULT_BLOCK, keyframe_codec: str | None = None) -> CodecSpec:
    """Build a spec from separate settings (the shape of a fleet config's `comm` section).

    Raises
    ------
    ValueError
        Naming the setting that is wrong.
    """
    codec_id = _codec_name(codec, "codec")
    if codec_id in SPARSE and not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction: expected a fraction in (0, 1], got {topk_fraction}")
    if block_size < 1:
        raise ValueError(f"block_size: expected >= 1, got {block_size}")
    keyframe = _codec_name(keyframe_codec, "keyframe_codec") if keyframe_codec else None
    if keyframe in SPARSE:
        raise ValueError("keyframe_codec: keyframes must be dense (fp32, fp16 or int8)")
    return CodecSpec(codec=codec_id, k_fraction=topk_fraction, block_size=block_size,
                     difference=difference_coding or codec_id in SPARSE,
                     keyframe_codec=keyframe or _default_keyframe(codec_id),
                     error_feedback=error_feedback)


def _codec_name(text: str, field: str) -> CodecId:
    try:
        return CodecId[text.strip().upper()]
    except KeyError:
        names = ", ".join(c.name.lower() for c in CodecId)
        raise ValueError(f"{field}: unknown codec {text!r}; expected one of {names}") from None


def parse_codec_spec(text: str) -> CodecSpec:
    """Parse `[choco+]NAME[:PARAM][/KEYFRAME][,noef]` into a spec.

    Examples: `fp16`, `int8:128`, `topk:0.01`, `stc:0.05/int8`,
    `choco+int8`, `topk:0.02/fp16`, `topk:0.01,noef`. PARAM is the kept fraction for topk and stc and the
    block size for int8; `noef` turns error feedback off (an ablation).

    Raises
    ------
    ValueError
        Naming what in `text` is wrong.
    """
    spec_text = text.strip().lower()
    spec_text, _, options = spec_text.partition(",")
    if options not in ("", "noef"):
        raise ValueError(f"codec {text!r}: unknown option {options!r}; expected 'noef'")
    difference = spec_text.startswith("choco+")
    if difference:
        spec_text = spec_text[len("choco+"):]
    spec_text, _, keyframe_text = spec_text.partition("/")
    name, _, param = spec_text.partition(":")
    codec = _codec_name(name, "codec")
    spec = CodecSpec(codec=codec, difference=difference or codec in SPARSE,
                     keyframe_codec=_default_keyframe(codec), error_feedback=options != "noef")
    if keyframe_text:
        keyframe = _codec_name(keyframe_text, "codec keyframe")
        if keyframe in SPARSE:
            raise ValueError(f"codec {text!r}: keyframes must be dense (fp32, fp16 or int8)")
        spec = replace(spec, keyframe_codec=keyframe)
    if param:
        try:
            value = float(param)
        except ValueError:
            raise ValueError(f"codec {text!r}: parameter {param!r} is not a number") from None
        if codec in SPARSE:
            if not 0.0 < value <= 1.0:
                raise ValueError(f"codec {text!r}: {name} fraction must be in (0, 1], got {param}")
            spec = replace(spec, k_fraction=value)
        elif codec is CodecId.INT8:
            if value != int(value) or not 1 <= value <= 1 << 20:
                raise ValueError(f"codec {text!r}: int8 block size must be an integer >= 1")
            spec = replace(spec, block_size=int(value))
        else:
            raise ValueError(f"codec {text!r}: {name} takes no parameter")
    return spec
