"""The training math and its loop: losses, the critic and generator steps, guard, EMA, schedule, the builder."""
