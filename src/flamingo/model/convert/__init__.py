"""Checkpoint formats: converters used by the loader, the CLI and the parity tests."""

from flamingo.model.convert.openflamingo import (
    export_openflamingo_state,
    import_openflamingo_state,
    load_openflamingo,
    read_openflamingo_checkpoint,
)

__all__ = [
    "export_openflamingo_state",
    "import_openflamingo_state",
    "load_openflamingo",
    "read_openflamingo_checkpoint",
]
