"""The model zoo: real architectures built from Hugging Face `transformers`
configs with random weights (nothing is downloaded).

Every entry comes in two sizes: ``full`` (the published architecture, used by
the benchmark) and ``tiny`` (same structure, small widths and depths, used by
the test suite so a whole-model differential test takes seconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn


class LogitsOnly(nn.Module):
    """Wraps a `transformers` model so it takes positional tensors and returns
    one tensor (its logits or last hidden state): one calling convention for
    eager, torch.compile, ONNX export and the benchmark."""

    def __init__(self, model: nn.Module, output_field: str, pass_attention_mask: bool = False):
        super().__init__()
        self.model = model
        self.output_field = output_field
        # Decoders given no mask run transformers' packed-sequence detection
        # (torch.diff + cumsum over position ids), which neither ONNX export
        # nor a real serving call needs: give them the all-ones mask a
        # tokenizer would.
        self.pass_attention_mask = pass_attention_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pass_attention_mask:
            return getattr(self.model(x, attention_mask=torch.ones_like(x)), self.output_field)
        return getattr(self.model(x), self.output_field)


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str  # "cnn" or "transformer"
    build: Callable[[str], nn.Module]  # size -> model in eval mode
    make_input: Callable[[str, int], torch.Tensor]  # (size, batch) -> input

    def model(self, size: str = "full") -> nn.Module:
        if size not in ("full", "tiny"):
            raise ValueError(f"zoo size must be 'full' or 'tiny', got {size!r}")
        torch.manual_seed(0)
        model = self.build(size)
        _calibrate_batchnorm(model, lambda: self.make_input(size, 4))
        return model.eval()

    def example_input(self, size: str = "full", batch: int = 1) -> torch.Tensor:
        torch.manual_seed(1)
        return self.make_input(size, batch)


def _calibrate_batchnorm(model: nn.Module, make_input: Callable[[], torch.Tensor]) -> None:
    """Give batch-norm layers the running statistics of real activations.

    Freshly initialised BN layers hold mean 0 / var 1, so in eval mode the
    activations of a random-weight network shrink layer after layer (the
    logits of MobileNetV2 end up ~1e-30) and any output comparison becomes
    meaningless. A few training-mode forward passes fix that.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(make_input())
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


def _images(full_res: int, tiny_res: int, channels: int = 3):
    def make(size: str, batch: int) -> torch.Tensor:
        res = full_res if size == "full" else tiny_res
        return torch.randn(batch, channels, res, res)

    return make


def _tokens(full_len: int, tiny_len: int, vocab_full: int, vocab_tiny: int):
    def make(size: str, batch: int) -> torch.Tensor:
        length, vocab = (full_len, vocab_full) if size == "full" else (tiny_len, vocab_tiny)
        return torch.randint(0, vocab, (batch, length))

    return make


def _resnet(layer_type: str, full_depths: list[int], full_sizes: list[int]):
    def build(size: str) -> nn.Module:
        from transformers import ResNetConfig, ResNetForImageClassification

        if size == "full":
            cfg = ResNetConfig(layer_type=layer_type, depths=full_depths, hidden_sizes=full_sizes)
        else:
            tiny_sizes = [16, 32] if layer_type == "basic" else [32, 64]
            cfg = ResNetConfig(
                layer_type=layer_type, depths=[1, 1], hidden_sizes=tiny_sizes, embedding_size=16, num_labels=10
            )
        return LogitsOnly(ResNetForImageClassification(cfg), "logits")

    return build


def _mobilenet_v2(size: str) -> nn.Module:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    cfg = MobileNetV2Config() if size == "full" else MobileNetV2Config(depth_multiplier=0.35, num_labels=10)
    return LogitsOnly(MobileNetV2ForImageClassification(cfg), "logits")


def _convnext(size: str) -> nn.Module:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    if size == "full":
        cfg = ConvNextConfig()  # ConvNeXt-T
    else:
        cfg = ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=10)
    return LogitsOnly(ConvNextForImageClassification(cfg), "logits")


def _vit(size: str) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    if size == "full":  # ViT-S/16
        cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
    else:
        cfg = ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            num_labels=10,
        )
    return LogitsOnly(ViTForImageClassification(cfg), "logits")


def _bert(size: str) -> nn.Module:
    from transformers import BertConfig, BertModel

    if size == "full":
        cfg = BertConfig()  # BERT-base
    else:
        cfg = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            hidden_dropout_prob=0.0,  # deterministic training steps in tests
            attention_probs_dropout_prob=0.0,
        )
    return LogitsOnly(BertModel(cfg, add_pooling_layer=False), "last_hidden_state")


def _gpt2(size: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    if size == "full":
        cfg = GPT2Config(use_cache=False)  # GPT-2 small
    else:
        cfg = GPT2Config(
            vocab_size=100,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            use_cache=False,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    return LogitsOnly(GPT2LMHeadModel(cfg), "logits", pass_attention_mask=True)


def _llama(size: str) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if size == "full":  # a ~100M-parameter Llama with grouped-query attention
        cfg = LlamaConfig(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=8,
            num_attention_heads=12,
            num_key_value_heads=4,
            use_cache=False,
        )
    else:
        cfg = LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            use_cache=False,
        )
    return LogitsOnly(LlamaForCausalLM(cfg), "logits", pass_attention_mask=True)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("resnet18", "cnn", _resnet("basic", [2, 2, 2, 2], [64, 128, 256, 512]), _images(224, 32)),
        ZooEntry("resnet50", "cnn", _resnet("bottleneck", [3, 4, 6, 3], [256, 512, 1024, 2048]), _images(224, 32)),
        ZooEntry("mobilenet_v2", "cnn", _mobilenet_v2, _images(224, 32)),
        ZooEntry("convnext_tiny", "cnn", _convnext, _images(224, 32)),
        ZooEntry("vit_small", "transformer", _vit, _images(224, 32)),
        ZooEntry("bert_base", "transformer", _bert, _tokens(128, 16, 30522, 100)),
        ZooEntry("gpt2", "transformer", _gpt2, _tokens(128, 16, 50257, 100)),
        ZooEntry("llama", "transformer", _llama, _tokens(128, 16, 32000, 100)),
    ]
}


def get(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None
