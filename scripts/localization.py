"""Hydra entry point: see diffnorm.experiments.toy.localization."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.toy import localization


@hydra.main(config_path="../configs", config_name="localization", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(localization, cfg)


if __name__ == "__main__":
    preflight("localization")
    main()
