"""Hydra entry point: see diffnorm.experiments.stitching.stitching_study (the stitching study)."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.stitching import stitching_study


@hydra.main(config_path="../configs", config_name="stitching_study", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(stitching_study, cfg)


if __name__ == "__main__":
    preflight("stitching_study")
    main()
