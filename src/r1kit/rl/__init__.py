"""Reinforcement learning: GRPO loss, rollouts and the trainer."""
