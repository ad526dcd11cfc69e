"""Converters between diffnorm's networks and other libraries' implementations of the same networks.

``to_diffusers`` / ``from_diffusers``: ``TemporalUnet`` (norm=group) <-> Hugging Face diffusers'
``UNet1DModel`` in the Diffuser's block layout (``unet1d``). Importing this package imports diffusers.
"""

from diffnorm.interop.unet1d import from_diffusers, to_diffusers

__all__ = ["from_diffusers", "to_diffusers"]
