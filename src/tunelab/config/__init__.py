"""Config: one pydantic schema, YAML loading, ``--set`` overrides."""

from tunelab.config.loading import apply_overrides, dump_config, load_config, parse_config
from tunelab.config.schema import Config

__all__ = ["Config", "apply_overrides", "dump_config", "load_config", "parse_config"]
