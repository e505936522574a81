"""Fleet configuration: typed sections (schema), the YAML loader, agents, topology, overrides."""
