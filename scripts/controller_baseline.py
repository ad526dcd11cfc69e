"""Hydra entry point: see diffnorm.experiments.maze_data.controller_baseline."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.maze_data import controller_baseline


@hydra.main(config_path="../configs", config_name="controller_baseline", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(controller_baseline, cfg)


if __name__ == "__main__":
    preflight("controller_baseline")
    main()
