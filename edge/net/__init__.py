"""The networked agent: the round loop over MQTT, as it runs on a board."""
