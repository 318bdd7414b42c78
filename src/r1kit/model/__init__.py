"""Model: `ModelConfig` (+ named presets) and the trainable `Transformer`."""
from r1kit.model.config import PRESETS, ModelConfig
from r1kit.model.model import Transformer
from r1kit.model.params import count_params

__all__ = ["ModelConfig", "PRESETS", "Transformer", "count_params"]
