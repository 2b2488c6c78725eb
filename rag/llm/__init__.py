"""Language-model generators: one protocol, one module per backend (see :mod:`rag.llm.base`)."""

from rag.llm.base import (
    ENTRY_POINT_GROUP,
    Generation,
    GenerationFailure,
    Generator,
    GeneratorFailedError,
    SamplingParams,
    StreamEvent,
    StreamingGenerator,
    TextDelta,
    bounded,
    collect,
    generator_distribution,
    generator_factory,
    generator_for,
    register_generator,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Generation",
    "GenerationFailure",
    "Generator",
    "GeneratorFailedError",
    "SamplingParams",
    "StreamEvent",
    "StreamingGenerator",
    "TextDelta",
    "bounded",
    "collect",
    "generator_distribution",
    "generator_factory",
    "generator_for",
    "register_generator",
]
