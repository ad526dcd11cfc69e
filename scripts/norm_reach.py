"""Hydra entry point: see diffnorm.experiments.norm_reach.norm_reach."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.norm_reach import norm_reach


@hydra.main(config_path="../configs", config_name="norm_reach", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(norm_reach, cfg)


if __name__ == "__main__":
    preflight("norm_reach")
    main()
