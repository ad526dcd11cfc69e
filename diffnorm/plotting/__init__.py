"""Every figure the package makes, one module per area; all write PNGs with labelled axes, in the one
style of ``plotting.style``."""

import matplotlib

from diffnorm.plotting import style

matplotlib.use("Agg")
style.apply()
