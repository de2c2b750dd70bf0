"""Package layering: torchflava.modules and torchflava.data never import torchflava.models; training and
evaluation know nothing of FLAVA or of data; `import torchflava` is torch-free."""

import ast
from pathlib import Path
import subprocess
import sys

import pytest

import torchflava

PACKAGE_ROOT = Path(torchflava.__file__).parent
MODULE_FILES = sorted((PACKAGE_ROOT / "modules").rglob("*.py"))


def imported_modules(path: Path, root: Path = PACKAGE_ROOT) -> set[str]:
    """Absolute names of everything a file under package ``root`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from torchflava import models`
    return names


def is_models(name: str) -> bool:
    return name == "torchflava.models" or name.startswith("torchflava.models.")


def test_module_files_are_found():
    names = {p.relative_to(PACKAGE_ROOT).as_posix() for p in MODULE_FILES}
    assert {"modules/layers/attention.py", "modules/encoders/multimodal_encoder.py", "modules/init.py"} <= names


@pytest.mark.parametrize("path", MODULE_FILES, ids=lambda p: p.relative_to(PACKAGE_ROOT).as_posix())
def test_modules_do_not_import_models(path):
    offending = sorted(name for name in imported_modules(path) if is_models(name))
    assert not offending, f"{path} imports {offending}"


def test_import_checker_catches_models_imports(tmp_path):
    """The checker itself: every spelling of importing torchflava.models is caught."""
    layers = tmp_path / "torchflava" / "modules" / "layers"
    layers.mkdir(parents=True)
    spellings = [
        "import torchflava.models",
        "import torchflava.models.flava as f",
        "from torchflava.models import flava_model",
        "from torchflava.models.flava.model import FLAVAModel",
        "from torchflava import models",
        "from ...models import flava",
        "from ... import models",
    ]
    root, path = tmp_path / "torchflava", layers / "bad.py"
    for source in spellings:
        path.write_text(source + "\n")
        assert any(is_models(name) for name in imported_modules(path, root)), source
    path.write_text("from torchflava.modules.layers import MLP\nfrom . import mlp\nfrom .. import init\nimport torch\n")
    assert not any(is_models(name) for name in imported_modules(path, root))


def test_import_torchflava_does_not_import_torch():
    code = "import sys, torchflava; print('torch' in sys.modules, torchflava.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", torchflava.__version__]


def test_import_torchflava_modules_does_import_torch():
    """The probe above can tell: importing the building blocks does load torch."""
    code = "import sys, torchflava.modules.layers; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True"]


UPPER_LAYERS = ("torchflava.data", "torchflava.training", "torchflava.evaluation")


@pytest.mark.parametrize(
    "path",
    sorted((PACKAGE_ROOT / "modules").rglob("*.py")) + sorted((PACKAGE_ROOT / "models").rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE_ROOT)),
)
def test_modules_and_models_never_import_data_training_or_evaluation(path):
    bad = sorted(n for n in imported_modules(path) if n.startswith(UPPER_LAYERS))
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize(
    "path",
    sorted((PACKAGE_ROOT / "training").rglob("*.py")) + sorted((PACKAGE_ROOT / "evaluation").rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE_ROOT)),
)
def test_training_and_evaluation_know_nothing_of_flava_or_data(path):
    # One exception: evaluation/shapes.py scores any dual encoder on the built-in held-out shapes split,
    # so it reads that split (torchflava.data.shapes: pure scene generation, no pipeline, no model).
    allowed = ("torchflava.data.shapes",) if path.relative_to(PACKAGE_ROOT).as_posix() == "evaluation/shapes.py" else ()
    names = imported_modules(path)
    bad = sorted(
        n for n in names if n.startswith(("torchflava.models", "torchflava.data")) and not n.startswith(allowed)
    )
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize(
    "path", sorted((PACKAGE_ROOT / "data").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE_ROOT))
)
def test_data_imports_no_model_code(path):
    bad = sorted(n for n in imported_modules(path) if is_models(n))
    assert not bad, f"{path} imports {bad}"


def test_data_files_are_found():
    names = {p.relative_to(PACKAGE_ROOT).as_posix() for p in (PACKAGE_ROOT / "data").rglob("*.py")}
    assert {"data/mixing.py", "data/flava.py", "data/finetuning.py"} <= names


def test_the_clip_package_is_wiring_of_modules_in_at_most_450_lines():
    # issue 11: CLIP is built from torchflava.modules; its package holds builders, conversion and the model's wiring
    package = Path(__file__).resolve().parents[1] / "torchflava" / "models" / "clip"
    lines = sum(len(path.read_text().splitlines()) for path in package.glob("*.py"))
    assert 100 < lines <= 450, lines
