"""Networks: shapes at 64 and 128, exact compositing, crops, layout maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scenecomp.nets import (
    GLOW_SIGMA,
    KERNEL_NORM,
    ForegroundGenerator,
    GlobalDiscriminator,
    LayoutGenerator,
    ObjectDiscriminator,
    composite,
    crop_objects,
    layout_map,
    with_detail,
)


@pytest.mark.parametrize("res", [64, 128])
def test_shapes_at_resolution(res):
    torch.manual_seed(0)
    B, C = 2, 5
    g_bg = LayoutGenerator(z_dim=16, num_categories=C, resolution=res, channels=4, max_channels=16)
    g_fg = ForegroundGenerator(z_dim=16, num_categories=C, resolution=res, channels=4, max_channels=16, embed_dim=4)
    d = GlobalDiscriminator(num_categories=C, resolution=res, channels=4, max_channels=16)
    d_obj = ObjectDiscriminator(num_categories=C, crop_size=res // 2, channels=4, max_channels=16)
    z = torch.randn(B, 16)
    mask = torch.zeros(B, 1, res, res)
    mask[:, :, res // 4 : res // 2, res // 4 : res // 2] = 1
    cat = torch.tensor([0, 4])
    canvas = g_bg(z)
    assert canvas.shape == (B, 3, res, res) and canvas.abs().max() <= 1
    seg = torch.zeros(B, C, res, res)
    assert g_bg(z, seg).shape == (B, 3, res, res)
    fg = g_fg(z, cat, mask, canvas * (1 - mask))
    assert fg.shape == (B, 3, res, res) and fg.abs().max() <= 1
    score, feats = d(canvas, seg)
    assert score.shape == (B,) and feats[-1].shape[-1] == 4
    crop = crop_objects(torch.cat([canvas, mask], 1), mask, res // 2)
    assert crop.shape == (B, 4, res // 2, res // 2)
    assert d_obj(crop, cat)[0].shape == (B,)
    assert g_bg.resolution == g_fg.resolution == res and g_fg.z_dim == 16 and g_fg.num_categories == C


def test_unsupported_resolution_is_a_clear_error():
    with pytest.raises(ValueError, match="power of two"):
        ForegroundGenerator(resolution=96)
    with pytest.raises(ValueError, match="power of two"):
        LayoutGenerator(resolution=2)


def test_composite_is_exact_outside_the_mask():
    torch.manual_seed(0)
    canvas = torch.rand(2, 3, 16, 16) * 2 - 1
    painted = torch.full_like(canvas, float("nan"))  # even garbage outside must not leak
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    out = composite(canvas, painted, mask)
    outside = mask.expand_as(canvas) == 0
    assert torch.equal(out[outside], canvas[outside])
    assert torch.isnan(out[~outside]).all()


def test_foreground_generator_ignores_pixels_under_the_hole():
    """What lies under the object's region must not matter: G_fg blanks it itself."""
    torch.manual_seed(0)
    g = ForegroundGenerator(z_dim=8, num_categories=3, resolution=16, channels=4, max_channels=8, embed_dim=4)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1
    a = torch.rand(1, 3, 16, 16)
    b = a.clone()
    b[..., 4:10, 4:10] = -5
    z, c = torch.randn(1, 8), torch.tensor([1])
    assert torch.equal(g(z, c, mask, a), g(z, c, mask, b))


def test_crop_objects_frames_the_box():
    img = torch.zeros(1, 1, 64, 64)
    img[..., 10:20, 30:50] = 1  # a 20 wide, 10 high box
    crop = crop_objects(img, img, 32, margin=0.0)[0, 0]
    assert crop.mean().item() == pytest.approx(0.5, abs=0.03)  # square crop of side 20: half of it is the box
    assert crop[:, 16].sum().item() == pytest.approx(16, abs=1.5)
    empty = crop_objects(img, torch.zeros(1, 1, 64, 64), 32, margin=0.0)
    assert empty.mean().item() == pytest.approx(img.mean().item(), abs=0.02)  # empty mask: whole image


def test_native_crops_keep_a_small_objects_pixels_and_scale_only_large_ones():
    img = torch.rand(2, 3, 64, 64)
    img[..., ::2, :] = -1  # rows alternating two pixels apart, like a house's bricks
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 11:18, 21:30] = 1  # a 9 x 7 box, centre between pixels
    mask[1, :, 2:60, 5:55] = 1  # larger than the window
    crops = crop_objects(torch.cat([img, mask], 1), mask, 32, native=True)
    small = crops[0]
    assert small[3].sum().item() == mask[0].sum().item()  # the whole mask, each pixel once: no interpolation
    # the box spans rows 11-17 and columns 21-29: its centre (14.5, 25.5) rounds to the pixel edges (14, 26);
    # the window's top 2 rows lie above the image, zeros
    window = F.pad(torch.cat([img[0], mask[0]]), (16, 16, 16, 16))[:, 14 : 14 + 32, 26 : 26 + 32]
    assert torch.equal(small, window)
    scaled = crop_objects(torch.cat([img, mask], 1), mask, 32)
    assert torch.equal(crops[1], scaled[1])  # a box that does not fit is scaled down as before
    assert not torch.allclose(small, scaled[0])  # scaled up, the stripes blur


def test_layout_map_paints_later_objects_on_top():
    masks = torch.zeros(1, 3, 1, 8, 8)
    masks[0, 0, 0, :, :4] = 1
    masks[0, 1, 0, :, 2:6] = 1  # covers part of object 0
    cats = torch.tensor([[2, 0, 1]])  # object 2 is padding (empty mask)
    seg = layout_map(masks, cats, 3)
    assert seg.shape == (1, 3, 8, 8)
    assert seg[0, 2, :, :2].eq(1).all() and seg[0, 2, :, 2:].eq(0).all()
    assert seg[0, 0, :, 2:6].eq(1).all()
    assert seg[0, 1].eq(0).all()
    assert seg.sum(1).max() == 1


def test_pixel_noise_is_the_tail_of_the_noise_vector_and_only_adds_grain():
    torch.manual_seed(0)
    g = LayoutGenerator(
        z_dim=8, num_categories=2, resolution=16, channels=4, max_channels=8, padding_mode="reflect", pixel_noise=True
    ).eval()
    assert g.noise_dim == 8 + 16 * 16
    z = torch.randn(2, g.noise_dim)
    regrained = torch.cat([z[:, :8], torch.randn(2, 16 * 16)], 1)
    with torch.no_grad():
        assert torch.equal(g(z), g(regrained))  # strengths start at zero: the grain does nothing yet
        for block in g.blocks:
            block.noise2.strength.fill_(0.5)
        a, b = g(z), g(regrained)
    assert not torch.equal(a, b)
    assert torch.equal(a, g(z.clone()).detach())  # the same vector, the same image
    with pytest.raises(ValueError, match=r"\[B,264\]"):
        g(torch.randn(2, 8))  # the style part alone is not a noise vector


def test_rgb_grain_starts_on_and_learns_where_it_belongs():
    torch.manual_seed(0)
    kw = dict(z_dim=8, num_categories=2, resolution=16, channels=4, max_channels=8, pixel_noise=True)
    g = LayoutGenerator(**kw, rgb_grain=0.05)
    assert g.init_kwargs["rgb_grain"] == 0.05 and "rgb_grain" not in LayoutGenerator(**kw).init_kwargs
    z = torch.randn(2, g.noise_dim)
    regrained = torch.cat([z[:, :8], torch.randn(2, 16 * 16)], 1)
    a, b = g(z), g(regrained)  # block strengths are zero, so only the output grain differs
    assert 0.0 < (a - b).abs().mean() < 0.2
    # a loss that wants the grain gone (match the grain-free image) pulls the strength towards zero
    target = LayoutGenerator(**kw).eval()
    target.load_state_dict(g.state_dict(), strict=False)
    with torch.no_grad():
        clean = target(z)
    F.mse_loss(a, clean).backward()
    assert g.rgb_grain.bias.grad.gt(0).all()  # gradient descent lowers it
    with pytest.raises(ValueError, match="rgb_grain needs pixel_noise"):
        LayoutGenerator(z_dim=8, resolution=16, channels=4, max_channels=8, rgb_grain=0.05)


def test_reflect_padding_draws_no_frame_and_old_kwargs_still_build():
    # a bundle written before these options carries neither key: zero padding, no pixel noise
    old = LayoutGenerator(z_dim=8, num_categories=2, resolution=16, channels=4, max_channels=8)
    assert old.noise_dim == 8 and old.init_kwargs["padding_mode"] == "zeros"
    g = LayoutGenerator(z_dim=8, num_categories=2, resolution=16, channels=4, max_channels=8, padding_mode="reflect")
    g.load_state_dict(old.state_dict())  # the same weights: only the padding differs
    # a constant feature map stays constant up to the border only with reflect padding
    conv = g.blocks[-1].conv2.conv
    flat = conv(torch.ones(1, conv.in_channels, 8, 8))
    assert torch.allclose(flat, flat[..., 4:5, 4:5].expand_as(flat), atol=1e-6)
    with pytest.raises(ValueError, match="padding_mode"):
        LayoutGenerator(padding_mode="circular!")


def test_global_discriminator_without_spectral_norm_is_plain_convolutions():
    torch.manual_seed(0)
    kw = dict(num_categories=2, resolution=16, channels=4, max_channels=8)
    plain, normed = GlobalDiscriminator(**kw, spectral=False), GlobalDiscriminator(**kw)
    assert plain.init_kwargs["spectral"] is False and normed.init_kwargs["spectral"] is True
    assert not any("parametrizations" in k for k in plain.state_dict())
    assert sum("parametrizations" in k for k in normed.state_dict()) > 0
    # its weights act unscaled: doubling them doubles the last layer's pre-activation and changes the
    # score, where spectral norm would divide the scale out again
    x, seg = torch.randn(2, 3, 16, 16), torch.zeros(2, 2, 16, 16)
    with torch.no_grad():
        # initialised for LeakyReLU: features keep their scale through the stack (PyTorch's default
        # init would shrink them ~3x a layer, leaving a constant score and no gradient to learn from:
        # feature stds 0.28, 0.09, 0.04 over these three stages)
        assert all(0.2 < f.std() < 5 for f in plain(torch.randn(8, 3, 16, 16), torch.zeros(8, 2, 16, 16))[1])
        before = plain(x, seg)[0]
        plain.fc.weight.mul_(2)
        assert torch.allclose(plain(x, seg)[0] - plain.fc.bias, 2 * (before - plain.fc.bias), atol=1e-5)
        normed.eval()  # no power iteration: the same normalised weight before and after
        before = normed(x, seg)[0]
        normed.fc.parametrizations.weight.original.mul_(2)
        assert torch.allclose(normed(x, seg)[0], before, atol=1e-5)


def test_detail_discriminator_is_shown_the_grain():
    torch.manual_seed(0)
    ramp = torch.linspace(-0.5, 0.5, 16).view(1, 1, 1, 16).expand(2, 3, 16, 16)
    grain = 0.03 * torch.randn(2, 3, 16, 16)
    # the residual ignores smooth light (a ramp is its own 3x3 mean inside the frame) and keeps the grain
    assert with_detail(ramp)[:, 3:, :, 1:-1].abs().max() < 1e-6
    residual = with_detail(ramp + grain)[:, 3:, :, 1:-1]
    assert 0.08 < residual.std() < 0.14  # 4 x 0.03 x sqrt(8/9): amplitude kept, not normalised away
    d = GlobalDiscriminator(num_categories=2, resolution=16, channels=4, max_channels=8, detail=True)
    assert d.init_kwargs["detail"] and d.trunk.stem.in_channels == 3 + 3 + 2
    assert "detail" in GlobalDiscriminator(num_categories=2, resolution=16, channels=4, max_channels=8).init_kwargs
    seg = torch.zeros(2, 2, 16, 16)
    with torch.no_grad():  # so the score moves with the grain even where the image channels hardly do
        stem = d.trunk.stem
        stem.parametrizations.weight.original[:, :3].zero_()
        stem.parametrizations.weight.original[:, 5:].zero_()
        assert not torch.allclose(d(ramp, seg)[0], d(ramp + grain, seg)[0], atol=1e-4)


def test_const_input_gives_no_sample_a_grid_of_its_own():
    torch.manual_seed(0)
    kw = dict(z_dim=8, num_categories=2, resolution=16, channels=4, max_channels=8, padding_mode="reflect")
    g = LayoutGenerator(**kw, const_input=True)
    assert g.init_kwargs["const_input"] and "const_input" not in LayoutGenerator(**kw).init_kwargs
    assert not hasattr(g, "fc") and g.const.shape == (1, 8, 4, 4)
    # with a constant that is the same along every row, only the styles act (per channel, everywhere
    # alike), so every sample is the same along every row too: no sample paints a blob of its own
    with torch.no_grad():
        g.const.copy_(torch.randn(1, 8, 4, 1).expand(1, 8, 4, 4))
        rows = g(torch.randn(3, 8))
    assert torch.allclose(rows, rows[..., :1].expand_as(rows), atol=1e-5)
    assert (rows[0] - rows[1]).abs().mean() > 1e-3  # while the noise still sets each sample's look
    old = LayoutGenerator(**kw)  # the linear start gives each sample its own 4x4 grid
    with torch.no_grad():
        blobs = old(torch.randn(3, 8))
    assert not torch.allclose(blobs, blobs[..., :1].expand_as(blobs), atol=1e-3)


def test_row_coord_tells_the_generator_the_height_and_nothing_else():
    torch.manual_seed(0)
    kw = dict(z_dim=8, num_categories=2, resolution=16, channels=4, max_channels=8, padding_mode="reflect")
    g = LayoutGenerator(**kw, const_input=True, row_coord=True)
    assert g.init_kwargs["row_coord"] and "row_coord" not in LayoutGenerator(**kw).init_kwargs
    assert all(m.shared[0].in_channels == 2 + 1 for b in g.blocks for m in (b.conv1, b.conv2))
    flat = LayoutGenerator(**kw, const_input=True)  # the same network without the height channel
    for net in (g, flat):
        with torch.no_grad():
            net.const.fill_(0.3)  # a start the same everywhere: any structure must come from the map
            for m in (m for b in net.blocks for m in (b.conv1, b.conv2)):
                m.shared[0].weight.normal_()
    z = torch.randn(3, 8)
    with torch.no_grad():
        rows, blank = g(z), flat(z)
        layout = torch.zeros(3, 2, 16, 16)
        layout[:, 1, 4:8, 4:8] = 1
        scene = g(z, layout)  # head A: the layout map and the height side by side
    # reflect padding gives a plain generator no idea where it is: a flat start stays flat
    assert torch.allclose(blank, blank[..., :1, :1].expand_as(blank), atol=1e-6)
    # with the height it paints top and bottom differently, but the same along every row, up to the
    # left and right edges (replicate padding of the map: no frame)
    assert torch.allclose(rows, rows[..., :1].expand_as(rows), atol=1e-6)
    assert (rows[..., 0, :] - rows[..., -1, :]).abs().mean() > 1e-2
    assert scene.shape == (3, 3, 16, 16) and not torch.allclose(scene, rows)


def test_a_style_prior_draws_each_style_from_one_of_its_gaussians():
    torch.manual_seed(0)
    kw = dict(z_dim=4, num_categories=2, resolution=8, channels=4, max_channels=8, pixel_noise=True)
    g = LayoutGenerator(**kw)
    noise = torch.randn(3, g.noise_dim)
    assert g.noise_dim == g.latent_dim == 4 + 64 and torch.equal(g.latent(noise), noise)
    assert "prior_size" not in g.init_kwargs and "prior_mu" not in g.state_dict()  # old bundles load strictly
    mu = torch.arange(5.0)[:, None].expand(5, 4) * 10  # component k: every style entry 10k
    g.set_prior(mu, torch.full((5, 4), -30.0))  # (almost) no spread: a style is its component's mean
    assert g.init_kwargs["prior_size"] == 5 and g.noise_dim == g.latent_dim + 1
    noise = torch.randn(4000, g.noise_dim)
    latent = g.latent(noise)
    k = (latent[:, 0] / 10).round()
    assert torch.allclose(latent[:, :4], k[:, None].expand(-1, 4) * 10, atol=1e-4)
    assert torch.equal(latent[:, 4:], noise[:, 4:-1])  # the grain is the noise's, the pick is dropped
    counts = torch.bincount(k.long(), minlength=5)
    assert counts.min() > 700 and counts.max() < 900  # the last entry picks every component equally often
    assert torch.equal(k, (torch.special.ndtr(noise[:, -1].double()) * 5).floor())
    with torch.no_grad():
        assert g(latent[:2]).shape == (2, 3, 8, 8)
    # the pick comes from the noise as drawn, so a bfloat16 generator picks the same components
    assert torch.equal((g.to(torch.bfloat16).latent(noise)[:, 0] / 10).round(), k)
    rebuilt = LayoutGenerator(**g.init_kwargs)  # as a bundle rebuilds it: the kwargs size the buffers
    rebuilt.load_state_dict(g.float().state_dict())
    assert torch.equal(rebuilt.latent(noise), latent)
    with pytest.raises(ValueError, match=r"\[M,4\]"):
        g.set_prior(torch.zeros(3, 5), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"noise must be \[B,69\]"):
        g.latent(torch.randn(2, 68))


def test_a_foreground_prior_draws_each_objects_z_from_the_components_of_its_category():
    torch.manual_seed(0)
    g = ForegroundGenerator(z_dim=4, num_categories=3, resolution=16, channels=4, max_channels=8, embed_dim=2)
    noise, cats = torch.randn(6, g.noise_dim), torch.tensor([0, 1, 2, 0, 1, 2])
    assert g.noise_dim == 4 and torch.equal(g.latent(noise, cats), noise)
    assert "prior_size" not in g.init_kwargs and "prior_mu" not in g.state_dict()  # old bundles load strictly
    # category 2 has components 10, 30; category 0 has 20; category 1 none (given out of order: grouped on set)
    category = torch.tensor([2, 0, 2])
    g.set_prior(torch.tensor([10.0, 20.0, 30.0])[:, None].expand(3, 4), torch.full((3, 4), -30.0), category)
    assert g.init_kwargs["prior_size"] == 3 and g.noise_dim == 5 and g.prior_count.tolist() == [1, 0, 2]
    noise = torch.randn(3000, g.noise_dim)
    z = g.latent(noise, torch.arange(3000) % 3)
    assert torch.allclose(z[0::3], torch.full((1000, 4), 20.0), atol=1e-4)
    assert torch.equal(z[1::3], noise[1::3, :4])  # a category without components: the standard normal
    picked = z[2::3, 0].round()
    assert set(picked.tolist()) == {10.0, 30.0} and 400 < (picked == 10).sum() < 600
    assert torch.allclose(z[2::3], picked[:, None].expand(-1, 4), atol=1e-4)
    with torch.no_grad():
        painted = g(z[:2], torch.tensor([0, 1]), torch.ones(2, 1, 16, 16), torch.zeros(2, 3, 16, 16))
    assert painted.shape == (2, 3, 16, 16)
    rebuilt = ForegroundGenerator(**g.init_kwargs)  # as a bundle rebuilds it: the kwargs size the buffers
    rebuilt.load_state_dict(g.state_dict())
    assert torch.equal(rebuilt.latent(noise, torch.arange(3000) % 3), z)
    with pytest.raises(ValueError, match=r"\[M\] categories"):
        g.set_prior(torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"categories must lie in \[0, 3\)"):
        g.set_prior(torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"noise must be \[B,5\]"):
        g.latent(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))


def test_pixel_synthesis_paints_each_pixel_from_what_lies_there():
    torch.manual_seed(0)
    kw = dict(z_dim=8, num_categories=2, resolution=16, pixel_noise=True, synthesis="pixels", mlp_width=16, mlp_depth=2)
    g = LayoutGenerator(**kw, rgb_grain=0.05).eval()
    assert g.init_kwargs | kw == g.init_kwargs and not hasattr(g, "blocks")
    rebuilt = LayoutGenerator(**g.init_kwargs)  # what a bundle does: the kwargs alone rebuild it
    rebuilt.load_state_dict(g.state_dict())
    z = torch.randn(3, g.noise_dim)
    with torch.no_grad():
        image = g(z)
        assert image.shape == (3, 3, 16, 16) and image.abs().max() <= 1 and torch.equal(rebuilt.eval()(z), image)
        # no convolution mixes neighbours: a layout changed inside a box changes no pixel outside it
        layout = torch.zeros(3, 2, 16, 16)
        changed = layout.clone()
        changed[:, 1, 4:9, 6:12] = 1
        a, b = g(z, layout), g(z, changed)
    inside = changed[:, 1:].bool().expand_as(a)
    assert torch.equal(a[~inside], b[~inside]) and (a[inside] - b[inside]).abs().mean() > 1e-3
    assert torch.equal(g(z, None), a)  # head B is the empty layout
    # the grain is the noise vector's tail, and the output grain starts on: another map, another grain
    regrained = torch.cat([z[:, :8], torch.randn(3, 16 * 16)], 1)
    with torch.no_grad():
        assert 0.0 < (g(regrained) - image).abs().mean() < 0.5
        # and the texture is brightness: the MLP starts blind to the grain, so another grain map scales
        # each pixel's three channels (in [0,1]) by one factor, its colour kept (where none is clipped)
        other = g(regrained)
    ratio = (other + 1) / (image + 1)
    unclipped = ((other.abs() < 1) & (image.abs() < 1)).all(1, keepdim=True).expand_as(ratio)
    assert ratio.std() > 1e-3 and unclipped.float().mean() > 0.9
    assert torch.allclose(ratio[unclipped], ratio[:, :1].expand_as(ratio)[unclipped], rtol=1e-4)
    # points of light start off, and once on they light exactly the pixels where the grain passes GLOW_SIGMA
    with torch.no_grad():
        g.pixels.to_glow.bias.fill_(0.5)
        lit = g(regrained)
    grain = regrained[:, 8:].view(3, 1, 16, 16).expand_as(lit)
    points = grain > GLOW_SIGMA
    assert points.any() and torch.equal(lit[~points], other[~points]) and (lit[points] >= other[points]).all()
    assert (lit - other)[points].mean() > 0.3


def test_texture_filters_are_stored_small_so_that_adam_reshapes_them():
    """Only a filter's direction paints; stored at norm KERNEL_NORM, one Adam step of lr 5e-5 turns the blotch
    filter by ~0.3 % (stored at a sigma-4 Gaussian's own norm, ~3.5 here and 5.7 at 64 px, by 30x less)."""
    torch.manual_seed(0)
    kw = dict(z_dim=8, num_categories=2, resolution=16, pixel_noise=True, synthesis="pixels", mlp_width=16)
    g = LayoutGenerator(**kw, mlp_axes="y")
    norms = g.pixels.kernels.flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, KERNEL_NORM))
    z = torch.randn(2, g.noise_dim)
    with torch.no_grad():
        image = g(z)
    # a state saved at another norm (before KERNEL_NORM) loads at this one and paints the same image
    old = {k: v * 40 if k.endswith("kernels") else v for k, v in g.state_dict().items()}
    loaded = LayoutGenerator(**kw, mlp_axes="y")
    loaded.load_state_dict(old)
    assert torch.allclose(loaded.pixels.kernels.flatten(1).norm(dim=1), norms)
    with torch.no_grad():
        assert torch.allclose(loaded(z), image, atol=1e-6)
    # a loss that wants the texture wider than tall (rows alike along x) reshapes the blotch filter quickly
    before = g.pixels.kernels.detach().clone()
    opt = torch.optim.Adam(g.parameters(), lr=5e-5)
    maps = g.pixels.texture_maps(torch.randn(4, 1, 16, 16))
    (maps[..., 1:] - maps[..., :-1]).pow(2).mean().backward()
    opt.step()
    turned = (F.normalize(g.pixels.kernels.detach().flatten(1), dim=1) - F.normalize(before.flatten(1), dim=1)).norm(
        dim=1
    )
    assert turned[1] > 1e-3


def test_a_texture_grid_paints_blotches_as_value_noise_on_fixed_cells():
    """``texture_grid`` draws the blotch texture from rows x cols more noise entries, upsampled bilinearly as an
    image is resized (cell centres at fixed pixels), at unit RMS; a cell's noise reaches only its neighbours."""
    torch.manual_seed(0)
    kw = dict(z_dim=8, num_categories=2, resolution=16, pixel_noise=True, synthesis="pixels", mlp_width=16)
    g = LayoutGenerator(**kw, mlp_axes="y", rgb_grain=0.05, texture_grid=[4, 2]).eval()
    plain = LayoutGenerator(**kw, mlp_axes="y")
    assert g.latent_dim == plain.latent_dim + 8 and g.noise_dim == g.latent_dim
    # the grid takes the blotch filter's place: one filter (the fine grain) and two texture strengths, as before
    assert g.pixels.kernels.shape[0] == 1 and g.pixels.to_grain.out_channels == plain.pixels.to_grain.out_channels
    rebuilt = LayoutGenerator(**g.init_kwargs).eval()  # a bundle's JSON kwargs rebuild it
    rebuilt.load_state_dict(g.state_dict())
    assert g.init_kwargs["texture_grid"] == [4, 2]
    cells = torch.randn(512, 1, 4, 2)
    texture = g.pixels.grid_texture(cells)
    up = F.interpolate(cells, size=(16, 16), mode="bilinear")
    assert torch.allclose(texture, up * (texture[0, 0, 0, 0] / up[0, 0, 0, 0]), atol=1e-5)
    assert abs(float(texture.pow(2).mean()) - 1) < 0.1
    # cells 4 px tall and 8 wide: the corner pixels carry their cell's value alone, the pixels between two
    # cells' centres a blend, so their variance is lower (the texture is not stationary: its cells stay put)
    var = texture.var(0)[0]
    assert var[0, 0] > 1.5 * var[4, 0] and var[0, 0] > 1.5 * var[0, 8]
    z = torch.randn(2, g.noise_dim)
    with torch.no_grad():
        image = g(z)
        assert torch.equal(rebuilt(z), image)
        moved = z.clone()
        moved[:, -8] += 3  # the top-left cell
        changed = (g(moved) - image).abs().amax((0, 1)) > 0
    assert changed[:6, :12].any() and not changed[6:].any() and not changed[:, 12:].any()
    for bad in ([0, 2], [4, 17], [4.5, 2], [True, 2], [4], 4, "42"):
        with pytest.raises(ValueError, match="grid"):
            LayoutGenerator(**kw, texture_grid=bad)
    with pytest.raises(ValueError, match="texture_grid"):
        LayoutGenerator(z_dim=8, resolution=16, pixel_noise=True, texture_grid=[4, 2])


def test_a_grain_gate_starts_open_and_closed_it_leaves_no_texture_at_all():
    """``grain_gate`` multiplies every texture gain by ``max(0, to_gate(h))``: at its start (1 everywhere) the
    generator paints what the same weights paint without it, so a warm start is unchanged; where the gate is at
    or below zero there is no texture at all (a clean sky), whatever the gains."""
    torch.manual_seed(0)
    kw = dict(z_dim=8, num_categories=2, resolution=16, pixel_noise=True, synthesis="pixels", mlp_width=16)
    plain = LayoutGenerator(**kw, mlp_axes="y", rgb_grain=0.05, texture_grid=[4, 2]).eval()
    gated = LayoutGenerator(**kw, mlp_axes="y", rgb_grain=0.05, texture_grid=[4, 2], grain_gate=True).eval()
    missing, unexpected = gated.load_state_dict(plain.state_dict(), strict=False)  # a warm start from it
    assert set(missing) == {"pixels.to_gate.weight", "pixels.to_gate.bias"} and not unexpected
    assert "to_gate" not in "".join(gated.colour_weights())  # the gate scales noise: a style's colour is kept
    rebuilt = LayoutGenerator(**gated.init_kwargs).eval()  # a bundle's JSON kwargs rebuild it
    assert gated.init_kwargs["grain_gate"] is True and "grain_gate" not in plain.init_kwargs
    z = torch.randn(3, gated.noise_dim)
    with torch.no_grad():
        gated.pixels.to_grain.weight.normal_(0, 0.5)  # strong texture that varies with the features
        plain.pixels.to_grain.weight.copy_(gated.pixels.to_grain.weight)
        rebuilt.load_state_dict(gated.state_dict())
        assert torch.equal(gated(z), plain(z)) and torch.equal(rebuilt(z), plain(z))
        flat = plain(z).clone()
        textured = (flat[:, :, 1:] - flat[:, :, :-1]).abs().mean()
        torch.nn.init.constant_(gated.pixels.to_gate.bias, -0.5)  # closed everywhere
        closed = gated(z)
        for name in ("to_grain", "to_gate"):  # no texture: the colour alone (the grain still feeds the MLP)
            torch.nn.init.zeros_(getattr(gated.pixels, name).weight)
            torch.nn.init.zeros_(getattr(gated.pixels, name).bias)
        assert torch.equal(closed, gated(z))
        assert (closed[:, :, 1:] - closed[:, :, :-1]).abs().mean() < textured / 2
    with pytest.raises(ValueError, match="grain_gate"):
        LayoutGenerator(z_dim=8, resolution=16, pixel_noise=True, grain_gate=True)


def test_pixel_synthesis_can_paint_a_sky_the_same_along_every_row():
    torch.manual_seed(0)
    g = LayoutGenerator(z_dim=8, num_categories=2, resolution=16, pixel_noise=True, synthesis="pixels", mlp_width=16)
    px = g.pixels
    F_ = px.frequencies
    x_inputs = [1, *range(2 + F_, 2 + 2 * F_), *range(2 + 3 * F_, 2 + 4 * F_)]  # x, its sines and its cosines
    noise_inputs = [2 + 4 * F_]
    with torch.no_grad():  # blind the first layer to x and to the noise, and turn the output grain off
        px.inp.weight[:, x_inputs + noise_inputs] = 0
        px.to_grain.bias.zero_()
        rows = g(torch.randn(3, g.noise_dim))
    # then every row is one colour, to the last bit (no padding, no grid, no upsampling), while the
    # rows still differ from top to bottom and the samples from each other
    assert torch.equal(rows, rows[..., :1].expand_as(rows))
    assert (rows[..., 0, 0] - rows[..., -1, 0]).abs().mean() > 1e-3
    assert (rows[0] - rows[1]).abs().mean() > 1e-3
    # with axes="y" it is horizontally stationary by construction: it starts row-constant with the noise
    # off (the noise's inputs start at zero), and only the noise can ever make a row vary
    kw = dict(z_dim=8, num_categories=2, resolution=16, pixel_noise=True, synthesis="pixels", mlp_width=16)
    stationary = LayoutGenerator(**kw, mlp_axes="y", rgb_grain=0.0)
    # its inputs: y, 6 sines and 6 cosines of it, the grain, 2 categories
    assert stationary.init_kwargs["mlp_axes"] == "y" and stationary.pixels.inp.in_channels == 13 + 1 + 2
    with torch.no_grad():
        rows = stationary(torch.randn(3, stationary.noise_dim))
        assert torch.equal(rows, rows[..., :1].expand_as(rows))
        stationary.pixels.inp.weight.normal_()  # whatever it learns, a flat noise map gives flat rows
        flat = torch.cat([torch.randn(3, 8), torch.full((3, 256), 0.7)], 1)
        rows = stationary(flat)
    assert torch.allclose(rows, rows[..., :1].expand_as(rows), atol=1e-6)  # (the texture filters round)
    with pytest.raises(ValueError, match="axes"):
        LayoutGenerator(**kw, mlp_axes="x")
    with pytest.raises(ValueError, match="pixel_noise"):
        LayoutGenerator(z_dim=8, resolution=16, synthesis="pixels")
    with pytest.raises(ValueError, match="convolutional trunk"):
        LayoutGenerator(z_dim=8, resolution=16, pixel_noise=True, synthesis="pixels", const_input=True)
    with pytest.raises(ValueError, match="synthesis"):
        LayoutGenerator(z_dim=8, resolution=16, synthesis="diffusion")
