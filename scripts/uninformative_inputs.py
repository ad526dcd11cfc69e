"""Hydra entry point: see diffnorm.experiments.toy.uninformative_inputs."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.toy import uninformative_inputs


@hydra.main(config_path="../configs", config_name="uninformative_inputs", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(uninformative_inputs, cfg)


if __name__ == "__main__":
    preflight("uninformative_inputs")
    main()
