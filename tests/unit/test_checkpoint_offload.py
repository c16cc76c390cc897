"""Activation checkpoint offload (train.checkpoint_offload): what checkpointing keeps goes to host memory
and comes back for the recompute, changing nothing computed; what moves is what the memory model says.

On this machine the host IS the device, so the offload's saving cannot show here; what is proved is
that exactly the checkpointed inputs pass through the offload hooks, and that training is unchanged."""

import copy

import pytest
import torch
import torch.nn.functional as F

import pitdist.distributed.checkpointing as checkpointing
from pitdist.config import load_config
from pitdist.models.pit import build_model, pixels_to_tokens
from pitdist.report.memory_model import activation_memory

IMAGE, IMAGES = (8, 8, 1), 3
MODEL = ["--model.dim", "32", "--model.depth", "4", "--model.heads", "4"]


def model_and_tokens():
    cfg = load_config(None, MODEL)
    torch.manual_seed(0)
    model = build_model(cfg.model, IMAGE, 10)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (IMAGES, *IMAGE), dtype=torch.uint8, generator=gen)
    return cfg, model, pixels_to_tokens(pixels, 1), torch.randint(0, 10, (IMAGES,), generator=gen)


def loss_and_grads(model, tokens, labels):
    loss = F.cross_entropy(model(tokens, torch.arange(tokens.shape[1])), labels)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("policy", ["full", "selective", "local"])
def test_offloading_what_checkpointing_keeps_changes_nothing_computed(policy):
    _, plain, tokens, labels = model_and_tokens()
    kept = checkpointing.apply_activation_checkpointing(copy.deepcopy(plain), policy)
    moved = checkpointing.apply_activation_checkpointing(copy.deepcopy(plain), policy, offload=True)
    loss, grads = loss_and_grads(kept, tokens, labels)
    offloaded_loss, offloaded_grads = loss_and_grads(moved, tokens, labels)
    assert offloaded_loss == loss
    for name, grad in grads.items():
        torch.testing.assert_close(offloaded_grads[name], grad, rtol=0, atol=0, msg=name)


class CountingOffload:
    """The offload's hooks as torch's save_on_cpu runs them, counting the bytes they move."""

    def __init__(self):
        self.bytes = 0

    def __call__(self):
        def pack(t):
            self.bytes += t.numel() * t.element_size()
            return t.device, t.to("cpu", copy=True)

        def unpack(packed):
            device, t = packed
            return t.to(device)

        return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


@pytest.mark.parametrize("policy", ["full", "selective"])
def test_the_bytes_moved_to_the_host_are_the_checkpointed_inputs_the_memory_model_counts(policy, monkeypatch):
    cfg, plain, tokens, labels = model_and_tokens()
    counter = CountingOffload()
    monkeypatch.setattr(checkpointing, "offload_to_host", counter)
    model = checkpointing.apply_activation_checkpointing(plain, policy, offload=True)
    loss_and_grads(model, tokens, labels)
    expected = activation_memory(cfg.model, 64, 1, policy, images=IMAGES, offload=True)
    assert counter.bytes == expected.host > 0
    # The model takes them off the device's count, and brings one block input back for the recompute.
    kept = activation_memory(cfg.model, 64, 1, policy, images=IMAGES)
    one_input = IMAGES * 64 * 32 * 4  # [b, N, D] fp32
    assert expected.held == pytest.approx(kept.held - expected.host)
    assert expected.recompute == pytest.approx(kept.recompute + one_input)


def test_offload_without_a_checkpointing_policy_is_refused_by_name():
    from pitdist.config import ConfigError

    with pytest.raises(ConfigError, match="train.checkpoint_offload.*activation_checkpointing"):
        load_config(None, ["--train.checkpoint_offload", "true"])
