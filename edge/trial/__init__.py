"""Field trials: the runner, agent processes, faults, the live view and the record."""
