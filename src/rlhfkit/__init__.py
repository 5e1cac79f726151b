"""rlhfkit: InstructGPT end to end (SFT, reward model, PPO-ptx, evaluation, human feedback)."""

__version__ = "0.1.0"
