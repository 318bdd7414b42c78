"""Training machinery shared by the SFT loop (r1kit.sft) and the RL loop (r1kit.rl.trainer): log-probs through
the LM head in chunks, token-budget micro-batches, LoRA adapters, mixed precision and the memory plan."""
