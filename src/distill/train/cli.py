"""The Hydra entry point: ``torchrun scripts/train_rvfm.py <overrides>`` or ``python -m distill.train``."""

from __future__ import annotations

import logging
import sys
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record

CONFIG_PACKAGE = "pkg://distill.configs"


@hydra.main(version_base="1.3", config_path=CONFIG_PACKAGE, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    # imported here so that --help and config errors do not wait for torch, transformers and open_clip
    from distill.tensorfile import UnreadableFileError
    from distill.train.config import load_run_config
    from distill.train.trainer import train
    from distill.train.typed import ConfigError

    try:
        run = load_run_config(cfg)
        resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        train(run, resolved)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    except UnreadableFileError as err:  # a damaged checkpoint or stats file: the file and the fix
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


@record
def main() -> None:
    """Parse Hydra overrides from ``sys.argv`` and train (torchrun records a failing rank's error)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _hydra_main()
