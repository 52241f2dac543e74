"""Serving: the OpenAI-compatible HTTP API, its schemas and the feedback store.

- ``schemas``: OpenAI request/response models and the typed errors behind error bodies
- ``engine``: the model on one worker thread behind a bounded queue (generation, stop
  sequences, logprobs, streaming events, calibrated label probabilities)
- ``app``: ``create_app(engine, api_keys=..., store=..., model_name=...)``, the FastAPI app
- ``store``: the feedback store (completions and ratings in SQL)

Run it with ``tunelab serve MODEL`` or ``python -m tunelab.serving MODEL``; see
docs/serving.md.
"""
