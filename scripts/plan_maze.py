"""Hydra entry point: see diffnorm.experiments.planning.plan_maze."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.planning import plan_maze


@hydra.main(config_path="../configs", config_name="plan_maze", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(plan_maze, cfg)


if __name__ == "__main__":
    preflight("plan_maze")
    main()
