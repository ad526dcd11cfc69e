"""Hydra entry point: see diffnorm.experiments.toy.batchnorm_stats."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.toy import batchnorm_stats


@hydra.main(config_path="../configs", config_name="batchnorm_stats", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(batchnorm_stats, cfg)


if __name__ == "__main__":
    preflight("batchnorm_stats")
    main()
