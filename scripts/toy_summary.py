"""Hydra entry point: see diffnorm.experiments.toy_summary.toy_summary."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.toy_summary import toy_summary


@hydra.main(config_path="../configs", config_name="toy_summary", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(toy_summary, cfg)


if __name__ == "__main__":
    preflight("toy_summary")
    main()
