"""Serving: the Classifier, the batch CLI, the ONNX export, the Gradio app and its feedback store.

Imports neither data nor training (tests/test_layers.py checks it), so a Space ships without them."""
