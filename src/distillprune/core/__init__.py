"""Shared building blocks: typed configs, registries, atomic io, feature taps, checkpoints."""
