"""Hydra entry point: see diffnorm.experiments.maze_data.make_maze_dataset."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.maze_data import make_maze_dataset


@hydra.main(config_path="../configs", config_name="make_maze_dataset", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(make_maze_dataset, cfg)


if __name__ == "__main__":
    preflight("make_maze_dataset")
    main()
