"""Packaging for torchflava.

Users get version ranges here; the exact versions CI and developers use live in
requirements/dev-lock.txt, which `make test` installs.
"""

from pathlib import Path

from setuptools import find_packages, setup

_HERE = Path(__file__).parent


def _version() -> str:
    for line in (_HERE / "torchflava" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("torchflava/__init__.py has no __version__")


setup(
    name="torchflava",
    version=_version(),
    description="Composable vision-language building blocks and a fast, exact FLAVA for PyTorch",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["torchflava", "torchflava.*"]),
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "iopath>=0.1.10",
        "safetensors>=0.4",
    ],
    extras_require={
        "data": ["pillow>=10", "tokenizers>=0.19", "webdataset>=0.2.86", "fsspec>=2023.1"],
        "recipes": ["omegaconf>=2.3", "pyyaml>=6", "tqdm>=4.66", "matplotlib>=3.8", "fvcore>=0.1.5"],
        "tensorboard": ["tensorboard>=2.15"],
        "parquet": ["pyarrow>=14"],  # Hugging Face Hub datasets are parquet (torchflava.data.parquet)
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "expecttest>=0.2",
            "transformers>=4.40,<5",
            "scikit-image>=0.22",
            "torchvision>=0.19",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
