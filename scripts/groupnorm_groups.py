"""Hydra entry point: see diffnorm.experiments.toy.groupnorm_groups."""

import hydra
from omegaconf import DictConfig

from diffnorm.experiments.common import preflight, run_job
from diffnorm.experiments.toy import groupnorm_groups


@hydra.main(config_path="../configs", config_name="groupnorm_groups", version_base=None)
def main(cfg: DictConfig) -> None:
    run_job(groupnorm_groups, cfg)


if __name__ == "__main__":
    preflight("groupnorm_groups")
    main()
