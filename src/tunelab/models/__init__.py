"""Models: loading (alias, hub id, local folder, GGUF), the task model and its loss,
precision, generation, saved model folders."""
