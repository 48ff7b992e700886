"""WGAN-GP trainer: Accelerate/DDP training of Wasserstein GANs with gradient penalty."""

__version__ = "0.1.0"
