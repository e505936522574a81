"""parse-edge test suite."""
