"""Hydra entry point: see diffnorm.experiments.leak_probe.leak_probe."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.leak_probe import leak_probe


@hydra.main(config_path="../configs", config_name="leak_probe", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(leak_probe, cfg)


if __name__ == "__main__":
    preflight("leak_probe")
    main()
