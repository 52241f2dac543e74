"""Hyperparameter search (``tunelab sweep``): an Optuna study over a search space declared
in the config's ``sweep`` section, tuned on the validation split; see docs/sweep.md."""

from tunelab.recipes.sweep.study import run_sweep, sweep_dir

__all__ = ["run_sweep", "sweep_dir"]
