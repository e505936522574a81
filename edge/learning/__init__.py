"""Learning: models, losses, sharing, strategies and the round loop."""
