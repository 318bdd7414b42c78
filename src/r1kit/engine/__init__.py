"""Generation: KV caches, sampling, batching. The model only computes logits."""
