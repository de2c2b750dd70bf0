"""Utilities shared by modules, models and recipes (no model code)."""
