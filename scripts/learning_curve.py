"""Hydra entry point: see diffnorm.experiments.learning_curve.learning_curve."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.learning_curve import learning_curve


@hydra.main(config_path="../configs", config_name="learning_curve", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(learning_curve, cfg)


if __name__ == "__main__":
    preflight("learning_curve")
    main()
