"""The JSON schema of ``results.json``, generated from :class:`tunelab.results.Results`.

``docs/results.schema.json`` is this module's output; a test fails when it is stale::

    python -m tunelab.results.schema > docs/results.schema.json
"""

from __future__ import annotations

import json

from tunelab import __version__
from tunelab.results.model import Results

__all__ = ["render_schema", "results_schema"]

SCHEMA_ID = "https://github.com/tunelab/tunelab/blob/main/docs/results.schema.json"


def results_schema() -> dict[str, object]:
    """The schema (draft 2020-12) of what ``results.json`` holds."""
    schema = Results.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"tunelab results.json (tunelab {__version__})",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def render_schema() -> str:
    return json.dumps(results_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(render_schema(), end="")
