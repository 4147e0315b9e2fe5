"""What users run: the command line, ``Pipeline`` (load and predict), the HTTP server, export (transformers and
ONNX) and the onnxruntime runtime, reports. Built on the engine and the sdk; nothing below imports them
(tests/test_layers.py checks it).
"""
