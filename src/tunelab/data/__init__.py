"""Data: sources, formats, cleaning, PII, dedupe, split, templates, tokenisation with loss
masks, batching, data card."""
