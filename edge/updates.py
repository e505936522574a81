"""How an agent encodes its branch updates: one codec setup for the simulator and the MQTT agent."""

from __future__ import annotations

from broker.codec_spec import codec_spec
from broker.sender import UpdateSender
from edge.config import FleetConfig


def update_sender(cfg: FleetConfig, agent_id: str) -> UpdateSender:
    """An agent's encoder for its branch updates, as the config's `comm` section says."""
    comm = cfg.comm
    spec = codec_spec(comm.codec, comm.topk_fraction, comm.difference_coding, comm.error_feedback,
                      keyframe_codec=comm.keyframe_codec)
    hmac_key = cfg.broker.hmac_key.encode() if cfg.broker.hmac_key else None
    return UpdateSender(cfg.fleet, agent_id, spec, keyframe_every=comm.keyframe_every,
                        hmac_key=hmac_key, chunk_bytes=comm.chunk_kib * 1024)
