"""Hydra entry point: see diffnorm.experiments.study.study (the README's `make study`)."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.study import study


@hydra.main(config_path="../configs", config_name="study", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(study, cfg)


if __name__ == "__main__":
    preflight("study")
    main()
