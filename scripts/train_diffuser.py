"""Hydra entry point: see diffnorm.experiments.diffuser.train_diffuser."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.diffuser import train_diffuser


@hydra.main(config_path="../configs", config_name="train_diffuser", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(train_diffuser, cfg)


if __name__ == "__main__":
    preflight("train_diffuser")
    main()
