"""Codec specs: text round trips, config-field builder, and errors that name the problem."""

from __future__ import annotations

import pytest

from broker.codec_spec import codec_spec, parse_codec_spec
from broker.codecs import CodecId


@pytest.mark.parametrize("text", ["fp32", "fp16", "int8", "int8:64", "topk:0.01", "choco+int8",
                                  "choco+fp16/int8", "topk:0.05/fp16", "topk:0.01,noef"])
def test_spec_text_round_trips(text: str) -> None:
    spec = parse_codec_spec(text)
    assert parse_codec_spec(str(spec)) == spec


def test_spec_semantics() -> None:
    assert parse_codec_spec("topk:0.05").difference
    assert parse_codec_spec("topk").keyframe_codec is CodecId.FP32
    assert parse_codec_spec("choco+int8").keyframe_codec is CodecId.INT8
    assert not parse_codec_spec("topk,noef").error_feedback
    assert codec_spec("topk", 0.02, error_feedback=False) == parse_codec_spec("topk:0.02,noef")


@pytest.mark.parametrize("text,match", [("zip", "unknown codec"), ("topk:2", "fraction"),
                                        ("int8:0", "block size"), ("fp16:3", "no parameter"),
                                        ("topk/topk", "dense"), ("topk:x", "not a number"),
                                        ("fp32,fast", "unknown option")])
def test_bad_specs_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_codec_spec(text)
