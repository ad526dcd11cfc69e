"""``export_diffusers(cfg, out)``: a trained planner handed to the Hugging Face ecosystem. The run's EMA
network (``norm=group``) becomes a diffusers ``UNet1DModel`` saved with ``save_pretrained`` into the run
directory, with diffnorm's config.yaml and scaler.json beside it, so that

* diffusers loads it: ``UNet1DModel.from_pretrained(<dir>)`` (the extra files are ignored there);
* every diffnorm job that takes a run takes the folder too (``checkpoint=<dir>``: planning, the leak
  probe, stitching evaluation), through ``diffusers`` and ``interop.from_diffusers``.

The export is checked before it is reported: the folder is loaded back the way diffnorm loads it, and
both networks are run on the same random plans; results.json records the largest difference. With
``leak=true`` the leak probe for any denoiser (``analysis.leak.measure``) runs on both networks too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffnorm.analysis.leak import measure
from diffnorm.experiments.common import require, resolve_path, write_results
from diffnorm.interop.unet1d import to_diffusers
from diffnorm.io import atomic_write_bytes
from diffnorm.training.checkpoint import CONFIG, SCALER, load_checkpoint


def _leak_numbers(measured: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in measured.items() if k != "influence_map"}


def export_diffusers(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run directory (or weights file) ``cfg.checkpoint`` -> a diffusers folder in ``out``."""
    require(cfg.checkpoint is not None, "give checkpoint=<a train_diffuser run directory> to export")
    source = resolve_path(str(cfg.checkpoint))
    loaded = load_checkpoint(source)
    unet = to_diffusers(loaded.diffusion.model)  # refuses any norm but GroupNorm in one line
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(str(out))
    atomic_write_bytes(out / CONFIG, OmegaConf.to_yaml(loaded.cfg).encode())
    atomic_write_bytes(out / SCALER, (json.dumps(loaded.scaler.state_dict(), indent=2) + "\n").encode())
    again = load_checkpoint(out)
    x = torch.randn(4, int(loaded.cfg.env.horizon), loaded.diffusion.transition_dim,
                    generator=torch.Generator().manual_seed(cfg.seed))
    t = torch.linspace(0, loaded.diffusion.n_diffusion_steps - 1, 4).long()
    with torch.no_grad():
        ours = loaded.diffusion.model(x, t)
        exported = again.diffusion.model(x, t)
        through_diffusers = unet(x.transpose(1, 2), t).sample.transpose(1, 2)
    results = {"checkpoint": str(loaded.path), "step": loaded.step, "norm": OmegaConf.to_container(loaded.cfg.norm),
               "parameters": sum(p.numel() for p in unet.parameters()), "unet1d_config": dict(unet.config),
               "max_abs_diff_reloaded": float((exported - ours).abs().max()),
               "max_abs_diff_diffusers_forward": float((through_diffusers - ours).abs().max()),
               "output_scale": float(ours.abs().max())}
    if cfg.leak:
        # The leak probe for any denoiser, once through diffnorm's network and once through diffusers' own
        # modules ([B, D, H] layout): the two must agree (float rounding: diffusers' float32 sinusoid).
        settings = {"horizon": int(loaded.cfg.env.horizon), "transition_dim": loaded.diffusion.transition_dim,
                    "observation_dim": loaded.diffusion.observation_dim, "seed": cfg.seed,
                    "n_diffusion_steps": loaded.diffusion.n_diffusion_steps, "row_stride": 4, "n_windows": 2}
        results["leak"] = {
            "diffnorm": _leak_numbers(measure(loaded.diffusion.model, **settings)),
            "diffusers": _leak_numbers(measure(unet, layout="BDH", **settings))}
        for path in ("diffnorm", "diffusers"):
            row = results["leak"][path]
            print(f"leak through {path}: receptive field {row['receptive_field']}, beyond-RF influence mass "
                  f"{row['beyond_rf_mass']:.6f}, one-pass goal leak {row['goal_one_pass_max_beyond_rf']:.6f}, "
                  f"chain {row['goal_chain_mean_beyond_rf']:.6f}")
        if settings["horizon"] - 1 <= min(results["leak"]["diffnorm"]["receptive_field"]):
            print(f"warning: at H={settings['horizon']} every plan index sees every other in one pass: the beyond-RF "
                  "numbers are 0 by construction (the leak probe measures longer plans with horizon=<H>)")
    write_results(out, results)
    print(f"{loaded.path} -> diffusers UNet1DModel ({results['parameters']:,} parameters); outputs agree to "
          f"{results['max_abs_diff_diffusers_forward']:.1e} (scale {results['output_scale']:.2f})")
    print(f"load it with UNet1DModel.from_pretrained({str(out)!r}), or give diffnorm's jobs checkpoint={out}")
    return results
