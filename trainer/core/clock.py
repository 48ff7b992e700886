"""The run's one step counter: generator steps done, and critic steps, which the lazy penalty's schedule reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Clock:
    """Advanced where the steps run (critic steps: trainer.core.step.critic_step; generator steps:
    trainer.core.loop.train_step), read by the lazy penalty (does this critic step pay?) and the non-finite guard (its
    message), set once on resume (trainer.core.build.Training.load_state_dict)."""

    step: int = 0  # generator steps done
    critic: int = 0  # critic steps done: step * n_critic between iterations

    def resume(self, step: int, n_critic: int) -> None:
        self.step, self.critic = step, step * n_critic
