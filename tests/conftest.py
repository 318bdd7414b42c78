import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """make_checkpoint(preset, template) -> a folder with a random-init model (seed 0) and the built-in tokenizer,
    saved the way r1kit saves checkpoints (the template travels in tokenizer_config.json)."""
    from r1kit.checkpoint.hf import save_model
    from r1kit.model import ModelConfig, Transformer
    from r1kit.tokenizer import Tokenizer

    def make(preset: str = "tiny", template: str = "r1-zero"):
        folder = tmp_path_factory.mktemp(preset)
        tok = Tokenizer.builtin()
        torch.manual_seed(0)
        save_model(Transformer(ModelConfig.from_name(preset).replace(bos_id=tok.bos_id, eos_id=tok.eos_id)), folder)
        tok.template = template
        tok.save(folder)
        return folder

    return make
