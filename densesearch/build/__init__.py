"""Builders: fine-tuning, ONNX export and the INT8 gate, index building and its tuning on dev, the learned ranker's
and the reranker's training, Ray encoding."""
