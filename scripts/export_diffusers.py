"""Hydra entry point: see diffnorm.experiments.export.export_diffusers."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.export import export_diffusers


@hydra.main(config_path="../configs", config_name="export_diffusers", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(export_diffusers, cfg)


if __name__ == "__main__":
    preflight("export_diffusers")
    main()
