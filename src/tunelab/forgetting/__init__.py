"""Catastrophic forgetting: measure it (the retention suite) and mitigate it (mitigations)."""
