"""The JVP-safe U-Net: shapes, conditioning, and torch.func.jvp against finite differences."""

import pytest
import torch

from otflow_lightning.nets import UNet


def _randomised(net: UNet) -> UNet:
    # the zero-initialised output convs make a fresh net the zero map; give every weight a value
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return net


def test_jvp_matches_finite_differences():
    net = _randomised(UNet(1, preset="tiny", num_times=2, num_classes=3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    t, h = torch.rand(3, generator=gen, dtype=torch.float64), torch.rand(3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 2, 3])  # 3 = null class
    dx = torch.randn_like(x)
    dt, dh = torch.ones_like(t), torch.full_like(h, -0.5)
    f = lambda x, t, h: net(x, t, h, labels=labels)  # noqa: E731
    out, jvp = torch.func.jvp(f, (x, t, h), (dx, dt, dh))
    eps = 1e-6
    fd = (f(x + eps * dx, t + eps * dt, h + eps * dh) - f(x - eps * dx, t - eps * dt, h - eps * dh)) / (2 * eps)
    torch.testing.assert_close(out, f(x, t, h))
    assert jvp.abs().max() > 1e-2  # not trivially zero
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-7)


def test_jvp_with_dropout_in_train_mode_is_consistent():
    # one jvp pass draws one dropout mask: its primal and tangent belong to the same function
    net = _randomised(UNet(1, preset="tiny", dropout=0.5, num_times=1)).double().train()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t = torch.rand(2, dtype=torch.float64)
    torch.manual_seed(5)
    out, jvp = torch.func.jvp(lambda x: net(x, t), (x,), (x,))
    eps = 1e-6
    torch.manual_seed(5)  # the same RNG state gives the same mask to the perturbed calls
    up = net(x + eps * x, t)
    torch.manual_seed(5)
    down = net(x - eps * x, t)
    torch.testing.assert_close(jvp, (up - down) / (2 * eps), rtol=1e-5, atol=1e-7)


def test_times_labels_and_shapes():
    net = _randomised(UNet(3, preset=None, channels=16, channel_mult=(1, 2, 2), num_blocks=1, attn_levels=(2,), num_times=1, num_classes=10))
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([0.1, 0.9]))
    assert out.shape == x.shape
    # the time and the label both change the output; no label = the null class
    assert not torch.allclose(out, net(x, torch.tensor([0.5, 0.5])))
    assert not torch.allclose(net(x, 0.3, labels=torch.tensor([1, 2])), net(x, 0.3, labels=torch.tensor([3, 4])))
    torch.testing.assert_close(net(x, 0.3), net(x, 0.3, labels=torch.tensor([10, 10])))


def test_fresh_net_is_zero_and_cifar_preset_scale():
    assert UNet(1, preset="tiny")(torch.randn(2, 1, 8, 8), 0.1, 0.2).abs().max() == 0
    params = sum(p.numel() for p in UNet(3, preset="cifar").parameters())
    assert 40e6 < params < 80e6  # EDM's DDPM++ CIFAR-10 net has about 56M


def test_bad_input_errors():
    net = UNet(1, preset="tiny")
    with pytest.raises(ValueError, match=r"UNet was built for num_times=2 time arguments but was called with 1: "
                                         r"OT-MF nets take 2 \(t, h\), OT-NFM flow maps 1; build it with num_times=1"):
        net(torch.randn(1, 1, 8, 8), 0.1)
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(1, 1, 7, 7), 0.1, 0.2)
    with pytest.raises(ValueError, match=r"expects \(n, 1, H, W\) images \(in_channels=1\), got \(1, 3, 8, 8\)$"):
        net(torch.randn(1, 3, 8, 8), 0.1, 0.2)  # the channel error says nothing of padding
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(1, 1, 8, 8), 0.1, 0.2, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="preset"):
        UNet(1, preset="huge")


@pytest.mark.parametrize("channels, attn", [(100, (1,)), (10, ())])
def test_widths_of_no_preset_get_groups_and_heads_that_divide_them(channels, attn):
    net = _randomised(UNet(1, preset=None, channels=channels, channel_mult=(1, 2), num_blocks=1, attn_levels=attn))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert all(m.num_channels % m.num_groups == 0 for m in norms)
    out = net(torch.randn(2, 1, 8, 8), 0.1, 0.2)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.slow
def test_compiled_unet_under_jvp_matches_eager():
    # compile is an option: the JVP still runs (eagerly, see UNet's docstring) and gives the same numbers
    eager = _randomised(UNet(1, preset="tiny"))
    compiled = _randomised(UNet(1, preset="tiny", compile=True))
    x, t, h = torch.randn(4, 1, 8, 8), torch.rand(4), torch.rand(4)
    tangents = (torch.randn_like(x), torch.ones_like(t), torch.zeros_like(h))
    torch.testing.assert_close(compiled(x, t, h), eager(x, t, h), rtol=1e-4, atol=1e-5)
    for a, b in zip(torch.func.jvp(compiled, (x, t, h), tangents), torch.func.jvp(eager, (x, t, h), tangents)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints stay portable
