"""parse-edge learning side: config, data, models, strategies, rounds, agent, trial, CLI."""
