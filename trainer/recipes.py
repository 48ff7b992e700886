"""The quality budgets' shared recipes (trainer.reproduce, trainer.converged): each loss with its paper's optimizer,
and the config each dataset trains from."""

from __future__ import annotations

TOYS = ("8gaussians", "25gaussians", "swissroll")
CONFIGS = {name: f"configs/{name}.yaml" for name in TOYS} | {"mnist5k": "configs/mnist5k-mlp.yaml"}
# Each loss with its paper's optimizer (null betas = the loss's default; see README "Losses and their paper defaults").
LOSSES = {
    "wgan-gp": [],
    "wgan-clip": ["loss.name=wgan-clip", "optim.betas=null"],  # RMSprop(5e-5), clip 0.01, n_critic 5
    "gan": ["loss.name=gan", "optim.betas=null", "train.n_critic=1"],  # Adam(2e-4, 0.5, 0.999), one D step per G step
    "gan-r1": ["loss.name=gan-r1", "optim.betas=null", "train.n_critic=1"],  # + R1, gamma 10, Adam(1e-4, 0, 0.99)
    "r3gan": ["loss.name=r3gan", "optim.betas=null", "train.n_critic=1"],  # RpGAN + R1 + R2, gamma 0.05, Adam(2e-4)
}
