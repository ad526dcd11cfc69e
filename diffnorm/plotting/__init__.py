"""Every figure the package makes, one module per area; all write PNGs with labelled axes."""

import matplotlib

matplotlib.use("Agg")
