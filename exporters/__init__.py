"""torch -> ONNX export of encoders and slice heads, quantization and the export manifest."""
