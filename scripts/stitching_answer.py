"""Hydra entry point: see diffnorm.experiments.stitching_answer.stitching_answer."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.stitching_answer import stitching_answer


@hydra.main(config_path="../configs", config_name="stitching_answer", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(stitching_answer, cfg)


if __name__ == "__main__":
    preflight("stitching_answer")
    main()
