"""torchflava: composable vision-language building blocks and FLAVA.

Importing the package has no side effects and imports nothing but torch-free metadata; import
``torchflava.modules`` or ``torchflava.models`` for the building blocks.
"""

__version__ = "0.1.0"
