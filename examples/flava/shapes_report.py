"""Zero-shot, linear-probe and fine-tuned accuracy of a `make train` checkpoint on the held-out shapes task.

    python examples/flava/shapes_report.py --run runs/tiny        (what `make evaluate` runs)

Zero-shot comes from the pretraining run's own report (prompt ensemble over the 30 colour-shape
names), the linear probe from ``torchflava.linear_probe`` (frozen image CLS, L2 chosen on a
validation split) and fine-tuning from ``finetune.py`` with ``configs/finetuning/shapes.yaml``;
all three are scored on the same held-out scenes, as many as the pretraining run's zero-shot
evaluation used (``data.shapes.num_test``, 540 by default; a ``data.shapes_val`` override changes the
fine-tuning's, and the report then gives each figure's count). Writes ``<run>/shapes_report.json``.
"""

import argparse
import importlib.util
import json
from pathlib import Path
import sys
from typing import Optional

from torchflava.evaluation import percent
from torchflava.linear_probe import probe_shapes
from torchflava.pretrained import load_pretrained
from torchflava.training.config import ConfigError, load_config
from torchflava.utils.cli import write_json

HERE = Path(__file__).resolve().parent


def _finetune_module():
    spec = importlib.util.spec_from_file_location("flava_finetune", HERE / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/tiny", help="output directory of examples/flava/train.py")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the fine-tuning config")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "report.json").is_file():
        raise ConfigError(f"--run: expected a pretraining run directory with a report.json, got {str(run)!r}")
    zero_shot = json.loads((run / "report.json").read_text())["eval"]
    scenes = zero_shot.get("test_items")
    if not isinstance(scenes, int) or isinstance(scenes, bool) or scenes < 5:
        raise ConfigError(f"--run: report.json's eval.test_items must be the zero-shot scene count, got {scenes!r}")
    finetune = _finetune_module()
    cfg = load_config(
        finetune.FinetuneConfig,
        [
            f"config={HERE / 'configs/finetuning/shapes.yaml'}",
            f"model.pretrained={run}",
            f"training.output_dir={run / 'finetune_shapes'}",
            "training.resume=auto",
            f"data.shapes_val={scenes}",  # the zero-shot's held-out scenes
            *args.overrides,
        ],
    )
    finetune.validate(cfg, 1)  # the overrides and the checkpoint's family, before the probe runs
    probe = probe_shapes(load_pretrained(run), num_test=scenes)
    tuned = finetune.main(cfg)["validation"]
    report = {
        "chance": zero_shot["zero_shot_chance"],
        "zero_shot": zero_shot["zero_shot_accuracy"],
        "linear_probe": probe.test_accuracy,
        "linear_probe_l2": probe.l2,
        "fine_tuned": tuned["accuracy"],
        "test_items": scenes,
        "fine_tuned_test_items": cfg.data.shapes_val,
    }
    write_json(run / "shapes_report.json", report, allow_nan=True)
    print(f"held-out shapes, {scenes} scenes, 30 colour-shape classes:")
    shown = {name: percent(report[name]) for name in ("zero_shot", "linear_probe", "fine_tuned", "chance")}
    width = max(map(len, shown.values()))  # (a share takes 4 to 8 characters: 3.3%, 99.996%, 0.00012%)
    for name, share in shown.items():
        count = f" ({cfg.data.shapes_val} scenes)" if name == "fine_tuned" and cfg.data.shapes_val != scenes else ""
        print(f"  {name.replace('_', ' '):13s} {share:>{width}s}{count}")
    return report


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:  # a bad override, or a run that is not a FLAVA pretraining run's
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
