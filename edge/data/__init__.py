"""Data: bundled and synthetic data sets, user npz files, partitions and per-agent splits."""
