"""`python -m trainer.bench`: the trainer's step raced against a plain PyTorch loop (trainer.bench.race)."""
