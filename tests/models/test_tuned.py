"""The prompted ViT: shapes, trained parameters, frozen eval-mode backbone, VPT semantics, fast path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vptsearch._errors import ConfigError
from vptsearch.models import METHODS, build_model
from vptsearch.models.tuned import HeadBatchNorm

METHOD_OPTIONS = [
    ("vpt", {"prompt_length": 3, "depth": "shallow"}),
    ("vpt", {"prompt_length": 3, "depth": "deep"}),
    ("vpt", {"prompt_length": 3, "depth": "deep", "deep_impl": "prefix_kv"}),
    ("linear", {}),
    ("full", {}),
    ("bias", {}),
    ("partial", {"k": 1}),
    ("adapter", {"reduction": 4}),
]


def _expected_trainable(model, method: str) -> set[str]:
    names = {n for n, _ in model.named_parameters()}
    head = {"head.weight", "head.bias"}
    if method == "vpt":
        return head | {"prompt_tokens"}
    if method == "linear":
        return head
    if method == "full":
        return names
    if method == "bias":
        return head | {n for n in names if n.startswith("backbone.") and n.endswith("bias")}
    if method == "partial":
        last = f"backbone.blocks.{model.num_layers - 1}."
        return head | {n for n in names if n.startswith((last, "backbone.norm.", "backbone.fc_norm."))}
    if method == "adapter":
        return head | {n for n in names if n.startswith("adapters.")}
    raise AssertionError(method)


@pytest.mark.parametrize(("method", "options"), METHOD_OPTIONS)
def test_shapes_trainable_params_and_frozen_backbone(vit, images, method, options):
    model = build_model(vit, 5, method, **options)
    x = images(vit, 4)
    logits = model(x)
    assert logits.shape == (4, 5) and logits.dtype == torch.float32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(model, method)
    assert set(model.trained_state_dict()) == trainable
    n_trainable = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert model.num_trainable_params() == n_trainable
    if method == "vpt":
        layers = model.num_layers if options["depth"] == "deep" else 1
        assert model.prompt_tokens.shape == (layers, 3, vit.embed_dim)

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if n not in trainable}
    trained_before = model.trained_state_dict()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    F.cross_entropy(model(x), torch.arange(4) % 5).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    opt.step()
    for n, before in frozen.items():
        assert torch.equal(before, dict(model.named_parameters())[n]), n
    # The head and (for VPT) the prompts really train: gradients reach the prompts through the ViT.
    after = model.trained_state_dict()
    moved = {n for n in after if not torch.equal(after[n], trained_before[n])}
    assert {"head.weight", "head.bias"} <= moved
    if method == "vpt":
        assert "prompt_tokens" in moved and float(model.prompt_tokens.grad.abs().min(-1).values.min()) > 0


def test_caller_backbone_is_never_modified(cls_vit, images):
    before = {k: v.clone() for k, v in cls_vit.state_dict().items()}
    flags = {n: p.requires_grad for n, p in cls_vit.named_parameters()}
    model = build_model(cls_vit, 3, "full")
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    build_model(cls_vit, 3, "adapter")
    assert all(torch.equal(before[k], v) for k, v in cls_vit.state_dict().items())
    assert flags == {n: p.requires_grad for n, p in cls_vit.named_parameters()}
    assert not cls_vit.blocks[0].mlp._forward_hooks


def test_backbone_stays_in_eval_mode_under_train(vit_factory, images):
    import timm

    torch.manual_seed(0)
    noisy = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        drop_rate=0.5,
        proj_drop_rate=0.5,
        attn_drop_rate=0.5,
        drop_path_rate=0.5,
    )
    model = build_model(noisy, 4, prompt_length=2, depth="deep", prompt_dropout=0.0)
    model.train()
    assert model.training and model.head.training
    assert not any(m.training for m in model.backbone.modules())
    x = images(noisy, 3)
    assert torch.equal(model(x), model(x))  # no stochastic layer active


def test_deep_prompts_replace_previous_prompt_outputs(vit, images):
    """The prompt slice entering block i is exactly prompt_tokens[i] (not block i-1's output)."""
    model = build_model(vit, 3, prompt_length=4, depth="deep", deep_impl="tokens").eval()  # the token path
    npf, p = model.num_prefix_tokens, 4
    seen: list[torch.Tensor] = []
    # norm1 sees each block's full input on every path (the last block may skip other sub-modules).
    hooks = [b.norm1.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for b in model.backbone.blocks]
    x = images(vit, 2)
    model(x)
    for h in hooks:
        h.remove()
    n_patches = model.embed(x).shape[1] - npf
    assert len(seen) == model.num_layers
    for i, tokens in enumerate(seen):
        assert tokens.shape[1] == npf + p + n_patches  # the sequence does not grow per layer
        torch.testing.assert_close(tokens[:, npf : npf + p], model.prompt_tokens[i].expand(2, -1, -1))


def test_shallow_prompts_flow_on_and_location_is_irrelevant(vit, images):
    """Shallow VPT == running the plain timm blocks on [prefix, patches, prompts] (prompts last)."""
    model = build_model(vit, 3, prompt_length=5, depth="shallow").eval()
    x = images(vit, 3)
    bb = model.backbone
    with torch.no_grad():
        t = model.embed(x)
        seq = torch.cat([t, model.prompt_tokens[0].expand(3, -1, -1)], dim=1)
        out = bb.norm(bb.blocks(seq))[:, :-5]  # drop the prompts' outputs
        feats = bb.fc_norm(bb.pool(out))
        torch.testing.assert_close(model.forward_features(x), feats, atol=1e-5, rtol=1e-5)


def test_linear_features_equal_the_timm_backbone(vit, images):
    """Without prompts the wrapper reproduces timm's own forward (pooling, fc_norm, reg tokens)."""
    model = build_model(vit, 3, "linear").eval()
    x = images(vit, 2)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), vit.eval()(x), atol=1e-6, rtol=1e-6)


def test_head_ignores_prompt_outputs_for_avg_pool(vit_factory, images):
    """MAE-style (no CLS, avg pool): the pooled feature is the mean of image tokens only."""
    vit = vit_factory("mae")
    model = build_model(vit, 3, prompt_length=6, depth="shallow").eval()
    x = images(vit, 2)
    with torch.no_grad():
        tokens, n_prompt = model.forward_tokens(x)
        assert n_prompt == 6 and tokens.shape[1] == 6 + 16
        torch.testing.assert_close(model.forward_features(x), vit.fc_norm(tokens[:, 6:].mean(1)))


@pytest.mark.parametrize("p", [1, 7])
def test_prefix_kv_equals_token_path_at_eval(vit, images, p):
    slow = build_model(vit, 4, prompt_length=p, depth="deep", deep_impl="tokens")
    fast = build_model(vit, 4, prompt_length=p, depth="deep", deep_impl="prefix_kv")
    with torch.no_grad():
        slow.prompt_tokens.normal_()  # larger than the VPT init, so prompts matter
    fast.load_trained_state_dict(slow.trained_state_dict())
    assert set(fast.state_dict()) == set(slow.state_dict())
    x = images(vit, 3)
    slow.eval()
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=1e-5)
        # Prompts do change the output (so the equality above is not vacuous).
        plain = build_model(vit, 4, "linear").eval()
        plain.head.load_state_dict(slow.head.state_dict())
        assert not torch.allclose(plain(x), slow(x), atol=1e-3)


def test_prefix_kv_gradients_equal_token_path(cls_vit, images):
    slow = build_model(cls_vit, 4, prompt_length=3, depth="deep")
    fast = build_model(cls_vit, 4, prompt_length=3, depth="deep", deep_impl="prefix_kv")
    fast.load_trained_state_dict(slow.trained_state_dict())
    x, y = images(cls_vit, 4), torch.tensor([0, 1, 2, 3])
    for m in (slow, fast):
        m.train()
        F.cross_entropy(m(x), y).backward()
    torch.testing.assert_close(fast.prompt_tokens.grad, slow.prompt_tokens.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast.head.weight.grad, slow.head.weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mask", ["sample", "batch"])
def test_prompt_dropout_mask_per_sample_by_default_batch_only_when_asked(cls_vit, images, mask):
    x = images(cls_vit, 1).expand(6, -1, -1, -1)  # six identical images
    for impl in ("tokens", "prefix_kv"):
        model = build_model(
            cls_vit, 3, prompt_length=8, depth="deep", prompt_dropout=0.5, deep_impl=impl, dropout_mask=mask
        )
        with torch.no_grad():
            model.prompt_tokens.normal_()
        torch.manual_seed(0)
        out = model.train()(x)
        same = torch.allclose(out[0:1].expand_as(out), out, atol=1e-6)
        assert same == (mask == "batch"), impl
        model.eval()
        assert torch.equal(model(x), model(x))  # no dropout at eval


@pytest.mark.parametrize("kind", ["cls", "dinov2", "mae"])
@pytest.mark.parametrize("mask", ["sample", "batch"])
def test_prefix_kv_equals_token_path_in_training_under_same_dropout_masks(vit_factory, images, kind, mask):
    vit = vit_factory(kind)
    opts = {"prompt_length": 5, "depth": "deep", "prompt_dropout": 0.3, "dropout_mask": mask}
    slow = build_model(vit, 4, deep_impl="tokens", **opts)
    fast = build_model(vit, 4, deep_impl="prefix_kv", **opts)
    with torch.no_grad():
        slow.prompt_tokens.normal_()
    fast.load_trained_state_dict(slow.trained_state_dict())
    x = images(vit, 5)
    outs = []
    for m in (slow, fast):
        torch.manual_seed(123)  # both paths draw one [B, p, d] (or [p, d]) mask per layer, in order
        outs.append(m.train()(x))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)
    torch.manual_seed(7)
    assert not torch.allclose(slow.train()(x), outs[0], atol=1e-4)  # the masks do matter


def test_unknown_dropout_mask_is_one_line(cls_vit):
    with pytest.raises(ConfigError, match="unknown prompt dropout mask 'shared'; accepted: sample, batch"):
        build_model(cls_vit, 3, prompt_dropout=0.1, dropout_mask="shared")


def test_dinov2_dynamic_image_size(vit_factory, images):
    vit = vit_factory("dinov2")
    slow = build_model(vit, 2, prompt_length=3, depth="deep").eval()
    fast = build_model(vit, 2, prompt_length=3, depth="deep", deep_impl="prefix_kv").eval()
    fast.load_trained_state_dict(slow.trained_state_dict())
    x = torch.randn(2, 3, 42, 35)  # not the 28 px it was built for
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), atol=1e-5, rtol=1e-5)


def test_trained_state_dict_keys_are_stable_and_round_trip(cls_vit, images):
    cases = {
        ("vpt", "deep"): {"prompt_tokens", "head.weight", "head.bias"},
        ("vpt", "shallow"): {"prompt_tokens", "head.weight", "head.bias"},
        ("linear", None): {"head.weight", "head.bias"},
    }
    for (method, depth), keys in cases.items():
        opts = {"prompt_length": 2, "depth": depth} if method == "vpt" else {}
        a = build_model(cls_vit, 3, method, **opts)
        assert set(a.trained_state_dict()) == keys
        b = build_model(cls_vit, 3, method, **opts)
        b.load_trained_state_dict(a.trained_state_dict())
        x = images(cls_vit, 2)
        assert torch.equal(a.eval()(x), b.eval()(x))
    adapter = build_model(cls_vit, 3, "adapter", reduction=4)
    assert "adapters.0.down.weight" in adapter.trained_state_dict()
    with pytest.raises(ConfigError, match="missing"):
        build_model(cls_vit, 3, prompt_length=2).load_trained_state_dict({"head.weight": torch.zeros(3, 32)})
    with pytest.raises(ConfigError, match="shape"):
        build_model(cls_vit, 3, prompt_length=2).load_trained_state_dict(
            build_model(cls_vit, 3, prompt_length=4).trained_state_dict()
        )


def test_random_init_bound(cls_vit):
    model = build_model(cls_vit, 3, prompt_length=50, depth="deep")
    v = (6 / (3 * 8 * 8 + 32)) ** 0.5
    assert model.random_init_bound() == pytest.approx(v)
    biggest = float(model.prompt_tokens.detach().abs().max())
    assert 0.9 * v < biggest <= v


def test_bad_input_errors(cls_vit):
    with pytest.raises(ConfigError, match=r"unknown method 'vtp'.*did you mean 'vpt'"):
        build_model(cls_vit, 3, "vtp")
    for bad in (0, -3, 2.5):
        with pytest.raises(ConfigError, match=f"prompt_length must be an integer >= 1, got {bad}"):
            build_model(cls_vit, 3, prompt_length=bad)
    with pytest.raises(ConfigError, match="unknown prompt depth 'middle'"):
        build_model(cls_vit, 3, depth="middle")
    with pytest.raises(ConfigError, match="unknown deep_impl 'fast'"):
        build_model(cls_vit, 3, deep_impl="fast")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'k' for method 'vpt'"):
        build_model(cls_vit, 3, k=2)
    with pytest.raises(ConfigError, match=r"partial k must be an integer in \[1, 3\], got 9"):
        build_model(cls_vit, 3, "partial", k=9)
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1, got 0"):
        build_model(cls_vit, 0)
    with pytest.raises(ConfigError, match=r"must be a timm VisionTransformer.*Linear"):
        build_model(torch.nn.Linear(3, 3), 3)
    import timm

    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0)
    with pytest.raises(ConfigError, match="ResNet"):
        build_model(resnet, 3)
    assert set(METHODS.names()) == {"vpt", "linear", "full", "bias", "partial", "adapter"}


def test_backbone_record_is_accepted(cls_vit, images):
    from vptsearch.models import Backbone

    record = Backbone(name="tiny", architecture="vit_tiny_patch16_224", model=cls_vit, image_size=32)
    model = build_model(record, 3, "linear").eval()
    x = images(cls_vit, 2)
    torch.testing.assert_close(model.forward_features(x), cls_vit.eval()(x))


def test_adapter_hooks_follow_copies(cls_vit, images):
    """Adapters hook the backbone's MLPs; a deep copy (or a pickle round trip) uses its own adapters."""
    import copy
    import io

    model = build_model(cls_vit, 3, "adapter", reduction=4).eval()
    with torch.no_grad():
        for a in model.adapters:
            a.up.weight.normal_()
    x = images(cls_vit, 2)
    ref = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    torch.testing.assert_close(torch.load(buf, weights_only=False)(x), ref)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for a in twin.adapters:
            a.up.weight.zero_()
    torch.testing.assert_close(model(x), ref)  # the original still uses its own adapters
    plain = build_model(cls_vit, 3, "linear").eval()
    plain.head.load_state_dict(twin.head.state_dict())
    torch.testing.assert_close(twin(x), plain(x))  # zeroed adapters are the identity


@pytest.mark.parametrize("impl", ["tokens", "prefix_kv"])
def test_cls_only_last_block_is_exact_and_active(cls_vit, images, impl):
    model = build_model(cls_vit, 3, prompt_length=4, depth="deep", deep_impl=impl).eval()
    with torch.no_grad():
        model.prompt_tokens.normal_()
    assert model.cls_only_last_block
    widths: list[int] = []
    model.backbone.blocks[-1].mlp.register_forward_hook(lambda m, a, out: widths.append(a[0].shape[1]))
    x = images(cls_vit, 3)
    with torch.no_grad():
        fast = model(x)
        model.cls_only_last_block = False
        full = model(x)
    assert widths == [1, 4 * 4 + 1 + (4 if impl == "tokens" else 0)]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_avg_pool_backbones_run_the_whole_last_block(vit_factory):
    assert not build_model(vit_factory("mae"), 3, "linear").cls_only_last_block


def test_batchnorm_head_standardises_features_and_its_statistics_are_trained_state(cls_vit, images):
    model = build_model(cls_vit, 3, "linear", head_norm="batchnorm")
    assert isinstance(model.head_norm, torch.nn.BatchNorm1d) and not model.head_norm.affine
    assert model.num_trainable_params() == 32 * 3 + 3  # the norm adds no parameters
    x = images(cls_vit, 8)
    with torch.no_grad():
        feats = model.forward_features(x)
        model.train()(x)  # one training step's statistics update
    state = model.trained_state_dict()
    assert {"head_norm.running_mean", "head_norm.running_var", "head_norm.num_batches_tracked"} <= set(state)
    # The first batch's statistics are taken whole (not 0.1 of them: see the next test).
    torch.testing.assert_close(state["head_norm.running_mean"], feats.mean(0))
    # Train mode normalises with the batch's statistics, eval mode with the running ones.
    with torch.no_grad():
        z = (feats - feats.mean(0)) / torch.sqrt(feats.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(model.train()(x), model.head(z), atol=1e-5, rtol=1e-4)
        other = build_model(cls_vit, 3, "linear", head_norm="batchnorm")
        other.load_trained_state_dict(model.trained_state_dict())
        torch.testing.assert_close(other.eval()(x), model.eval()(x))
        # A single training image cannot give batch statistics: the running ones are used.
        torch.testing.assert_close(model.train()(x[:1]), model.eval()(x[:1]))


def test_head_norm_statistics_average_the_first_batches_exactly_then_follow_momentum(cls_vit, images):
    """The shipped features carry a large constant offset: with momentum 0.1 from the start, a short
    run evaluates with ~0.1-0.3 of it and predicts one class (seen on a smoke launch's retrain)."""
    model = build_model(cls_vit, 3, "linear", head_norm="batchnorm").train()
    batches = [images(cls_vit, 4) for _ in range(12)]
    feats = []
    with torch.no_grad():
        for i, x in enumerate(batches):
            feats.append(model.forward_features(x).mean(0))
            model(x)
            if i == 2:  # after 3 batches: their exact average
                torch.testing.assert_close(model.head_norm.running_mean, torch.stack(feats).mean(0))
                resumed = build_model(cls_vit, 3, "linear", head_norm="batchnorm").train()
                resumed.load_trained_state_dict(model.trained_state_dict())
    # From batch 10 on the exponential average (momentum 0.1) takes over ...
    expect = torch.stack(feats[:10]).mean(0)
    for f in feats[10:]:
        expect = 0.9 * expect + 0.1 * f
    torch.testing.assert_close(model.head_norm.running_mean, expect)
    # ... and a model resumed from a checkpoint continues the same schedule (not from momentum 1).
    with torch.no_grad():
        for x in batches[3:]:
            resumed(x)
    torch.testing.assert_close(resumed.head_norm.running_mean, model.head_norm.running_mean)


def test_standardize_head_trains_on_the_running_statistics_with_batchnorms_updates(cls_vit, images):
    """``head.norm: standardize``: the same statistics and state as ``batchnorm`` (one update rule,
    same keys, same eval output), but training divides by the running statistics, so an image's
    head input does not depend on the rest of its batch beyond that update."""
    std = build_model(cls_vit, 3, "linear", head_norm="standardize").train()
    bn = build_model(cls_vit, 3, "linear", head_norm="batchnorm").train()
    bn.load_trained_state_dict(std.trained_state_dict())
    assert std.num_trainable_params() == bn.num_trainable_params()
    batches = [images(cls_vit, 8) for _ in range(12)]
    with torch.no_grad():
        for x in batches:
            out = std(x)
            bn(x)
            norm = std.head_norm
            z = (std.forward_features(x) - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
            torch.testing.assert_close(out, std.head(z), atol=1e-5, rtol=1e-4)  # after this batch's update
    for key, value in bn.trained_state_dict().items():  # exact averaging, then momentum 0.1, alike
        torch.testing.assert_close(std.trained_state_dict()[key], value, msg=key)
    x = batches[0]
    with torch.no_grad():
        torch.testing.assert_close(std.eval()(x), bn.eval()(x))
        # train mode, statistics frozen at this point: the first image's logits with or without
        # the rest of the batch (batchnorm's depend on its batch mates)
        frozen = {k: v.clone() for k, v in std.trained_state_dict().items()}
        alone = std.train()(torch.cat([x[:1], x[:1]]))[0]
        std.load_trained_state_dict(frozen)
        mixed = std.train()(x)[0]
    torch.testing.assert_close(alone, mixed, atol=2e-2, rtol=2e-2)  # only the 0.1-weight update differs
    gradient_model = build_model(cls_vit, 3, "linear", head_norm="standardize").train()
    gradient_model(batches[0]).sum().backward()  # the statistics are buffers: no gradient needed
    assert gradient_model.head.weight.grad is not None


def test_standardize_gradient_cannot_shift_or_scale_the_batch_like_batchnorms():
    """Batch Renormalization: the value of the running-statistics standardisation, the gradient of
    batch normalisation, which is orthogonal to shifting or scaling a feature over the batch. With
    the running statistics as plain constants the prompts could grow the head's input along its
    weights (every VPT trial on the supervised backbone diverged in its first epoch)."""
    torch.manual_seed(0)
    layer = HeadBatchNorm(6, batch_statistics=False)
    layer.set_statistics(torch.randn(6), torch.rand(6) + 0.5)
    layer.train()
    x = (torch.randn(16, 6) * 3 + 1).requires_grad_()
    y = layer(x)
    expected = (x - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps)  # after the update
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    (y * torch.randn(16, 6)).sum().backward()
    assert x.grad is not None
    centred = (x - x.mean(0)).detach()
    torch.testing.assert_close(x.grad.sum(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close((x.grad * centred).sum(0), torch.zeros(6), atol=1e-4, rtol=0)


def test_head_norm_state_must_be_complete_and_kind_known(cls_vit):
    plain = build_model(cls_vit, 3, "linear").trained_state_dict()
    missing = r"missing \['head_norm.num_batches_tracked', 'head_norm.running_mean'"
    with pytest.raises(ConfigError, match=missing):
        build_model(cls_vit, 3, "linear", head_norm="batchnorm").load_trained_state_dict(plain)
    accepted = "accepted: none, batchnorm, standardize"
    with pytest.raises(ConfigError, match=f"unknown head norm 'layernorm'; {accepted}"):
        build_model(cls_vit, 3, "linear", head_norm="layernorm")
