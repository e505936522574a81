"""Board side: device profiles, energy and resource meters, and the onnxruntime-only runtime."""
