"""Hydra entry point: see diffnorm.experiments.toy.packnorm_overlap."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.toy import packnorm_overlap


@hydra.main(config_path="../configs", config_name="packnorm_overlap", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(packnorm_overlap, cfg)


if __name__ == "__main__":
    preflight("packnorm_overlap")
    main()
