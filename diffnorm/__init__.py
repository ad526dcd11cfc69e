"""diffnorm: does the normalization layer of a convolutional diffusion planner leak information
beyond the network's receptive field, and does that hurt stitching?"""

__version__ = "0.1.0"
