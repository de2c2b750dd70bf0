"""Machinery shared by the recipes in ``examples/``: configs, process groups and model wrapping,
optimiser and schedule, atomic resumable checkpoints, metrics. Nothing here knows about FLAVA."""
