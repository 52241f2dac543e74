"""Serving: the OpenAI-compatible HTTP API, its schemas and the feedback store.

- ``schemas``: OpenAI request/response models and the typed errors behind error bodies
- ``engine``: the model on one worker thread behind a bounded queue (generation, streaming
  events, calibrated label probabilities)
- ``worker``: that thread and its bounded queue
- ``decoding``: the hooks ``generate`` is given (logprobs, penalties, stop sequences,
  streamed text) and the sampling parameters
- ``app``: ``create_app(engine, api_keys=..., store=..., model_name=...)``, the FastAPI app
  (auth, routes)
- ``responses``: response bodies, server-sent-event chunks and error bodies
- ``metrics``: what ``GET /metrics`` reports
- ``store``: the feedback store (completions and ratings in SQL)
- ``feedback_export``: training data from the feedback store

Run it with ``tunelab serve MODEL`` or ``python -m tunelab.cli.serve MODEL``; see
docs/serving.md.
"""
