"""How the step runs on hardware: Accelerate setup, DeepSpeed, execution options, CUDA graphs, phase timing."""
