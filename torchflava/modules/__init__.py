"""Generic, reusable building blocks. Nothing here imports ``torchflava.models``."""
