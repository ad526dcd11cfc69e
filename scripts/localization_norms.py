"""Hydra entry point: see diffnorm.experiments.toy.localization_norms."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.toy import localization_norms


@hydra.main(config_path="../configs", config_name="localization_norms", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(localization_norms, cfg)


if __name__ == "__main__":
    preflight("localization_norms")
    main()
