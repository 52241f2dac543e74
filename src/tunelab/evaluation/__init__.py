"""Evaluation: metrics over model outputs, and the runs that produce them."""
