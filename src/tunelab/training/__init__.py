"""Training: the one loop (``fit``), its optimizer, checkpoints, data parallelism and the
hooks regularisers plug into."""
