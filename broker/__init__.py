"""MQTT transport: wire format, codecs, chunking, client, embedded broker, Mosquitto config, discovery."""
