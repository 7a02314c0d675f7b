"""Run a short seeded training (no registry) on a prepared data dir; used under torchrun too.

usage: python tests/train_driver.py DATA_DIR RUN_DIR [max_steps] [resume]
"""

from __future__ import annotations

import sys
from pathlib import Path

from hounsfield.archive import Archive
from hounsfield.config import load_settings
from hounsfield.train.run import train


def main() -> None:
    data, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    resume = sys.argv[4] if len(sys.argv) > 4 else None
    settings = load_settings(data_dir=data, profile="demo")
    archive = Archive.open(settings)
    over = {"precision": "fp32", "max_steps": steps, "max_epochs": 10,
            "validation": {"every_n_epochs": 1}, "early_stopping": {"patience": 50}}
    res = train(archive, settings, "lung-nodule-detection", "nod", preset="tiny", overrides=over,
                run_dir=run_dir, register=False, evaluate=False, progress_bar=False,
                resume=resume, log=lambda _m: None)
    print(f"steps={res.steps} epochs={res.epochs} losses={res.losses}")


if __name__ == "__main__":
    main()
