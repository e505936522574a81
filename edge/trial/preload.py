"""What the trial's fork server (edge.trial.launch) imports once, before it forks any agent.

Torch, the learner, the MQTT transport, the data readers and the CLI parser: what an agent needs
before its first round, so that each forked agent starts without importing anything heavy.

Nothing here may start a thread or touch torch's thread pools: only the forking thread survives a
fork. `gc.freeze()` moves everything imported so far out of the collector's reach, so collections
in the agents do not write to (and so copy) the pages they share with the server.
"""

from __future__ import annotations

import gc

import torch._dynamo  # noqa: F401  (torch.optim imports it on the first optimizer: ~1.5 s)

import edge.data.fleet_data  # the data readers
import edge.net.agent  # noqa: F401  (torch, the learner, the round loop, the MQTT transport)
from edge.cli import build_parser

build_parser()  # imports every subcommand module, as `parse-edge agent` does
gc.freeze()
