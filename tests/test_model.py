"""Model behaviour on CPU: shapes, exact chunking, independence, equivariance, gradients, weights loading."""

import pytest
import torch
import torch.nn.functional as F

import sigrl
from sigrl.gmc import DenseGATv2

VOCAB = ["red", "green", "circle", "square", "dog", "a very long label name for a thing"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return sigrl.create_model("tiny")


def _images(model, batch):
    size = model.config.vision_cfg["image_size"]
    return torch.randn(batch, 3, size, size)


def test_public_contract_shapes_tiny(tiny):
    ids = sigrl.tokenize(VOCAB)
    assert ids.shape == (len(VOCAB), 77)
    with torch.no_grad():
        label_emb, graph_emb = tiny.encode_labels(ids)
        scores = tiny.score_images(_images(tiny, 3), label_emb, graph_emb)
        global_feat, patches = tiny.encode_image(_images(tiny, 3))
    assert label_emb.shape == graph_emb.shape == (len(VOCAB), 64)
    assert scores.shape == (3, len(VOCAB))
    assert global_feat.shape == (3, 64) and patches.shape == (3, 64, 64)
    assert not tiny.training


def test_public_contract_shapes_vit_b16():
    model = sigrl.create_model("vit-b16")
    with torch.no_grad():
        label_emb, graph_emb = model.encode_labels(sigrl.tokenize(VOCAB[:3]))
        global_feat, patches = model.encode_image(torch.randn(1, 3, 224, 224))
        scores = model.svfr(global_feat, patches, label_emb, graph_emb)
    assert label_emb.shape == graph_emb.shape == (3, 512)
    assert global_feat.shape == (1, 512) and patches.shape == (1, 196, 512)
    assert scores.shape == (1, 3)


def test_forward_composes_the_two_halves(tiny):
    ids, images = sigrl.tokenize(VOCAB), _images(tiny, 2)
    with torch.no_grad():
        composed = tiny.score_images(images, *tiny.encode_labels(ids))
        torch.testing.assert_close(tiny(images, ids), composed, rtol=0, atol=0)
        torch.testing.assert_close(tiny(images, label_emb=tiny.encode_text(ids)), composed, rtol=0, atol=0)
    with pytest.raises(ValueError, match="token_ids or label_emb"):
        tiny(images)


def test_text_truncated_to_longest_prompt_equals_full_context(tiny):
    ids = sigrl.tokenize(VOCAB)
    with torch.no_grad():
        ours = tiny.encode_text(ids)
        reference = tiny.clip.encode_text(ids)  # open_clip's own path over all 77 positions
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_global_feature_equals_clip_image_embedding(tiny):
    images = _images(tiny, 2)
    with torch.no_grad():
        global_feat, _ = tiny.encode_image(images)
        teacher = tiny.make_teacher()
        torch.testing.assert_close(global_feat, teacher(images), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_gmc_chunked_equals_unchunked(tiny, chunk):
    label_emb = torch.randn(11, 64)
    tiny.gmc.set_node_chunk(10_000)
    with torch.no_grad():
        whole = tiny.gmc(label_emb)
        tiny.gmc.set_node_chunk(chunk)
        chunked = tiny.gmc(label_emb)
    tiny.gmc.set_node_chunk(tiny.config.gmc_node_chunk)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 4, 7])
def test_svfr_chunked_equals_unchunked(tiny, chunk):
    ids, images = sigrl.tokenize([*VOCAB, "blue"]), _images(tiny, 2)
    with torch.no_grad():
        label_emb, graph_emb = tiny.encode_labels(ids)
        tiny.set_class_chunk(10_000)
        whole = tiny.score_images(images, label_emb, graph_emb)
        tiny.set_class_chunk(chunk)
        chunked = tiny.score_images(images, label_emb, graph_emb)
    tiny.set_class_chunk(tiny.config.class_chunk)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_checkpointed_chunks_give_the_same_gradients(tiny):
    model = sigrl.create_model("tiny", class_chunk=2, gmc_node_chunk=2).train()  # GMC dropout active
    ids, images = sigrl.tokenize(VOCAB), _images(model, 2)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(7)  # same dropout masks; recomputation replays them
        model(images, ids).sum().backward()
        grads.append([p.grad.clone() for p in (model.svfr.vfr_proj.weight, model.gmc.layer1.lin.weight,
                                                model.gmc.layer2.att, model.clip.visual.proj)])
    for checkpointed, plain in zip(*reversed(grads)):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)


def test_scores_independent_of_batch_mates(tiny):
    ids, images = sigrl.tokenize(VOCAB), _images(tiny, 4)
    with torch.no_grad():
        label_emb, graph_emb = tiny.encode_labels(ids)
        together = tiny.score_images(images, label_emb, graph_emb)
        alone = torch.cat([tiny.score_images(images[i:i + 1], label_emb, graph_emb) for i in range(4)])
        other = tiny.score_images(torch.cat([images[:1], _images(tiny, 3)]), label_emb, graph_emb)
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(other[:1], together[:1], rtol=1e-5, atol=1e-6)


def test_scores_equivariant_to_label_order(tiny):
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    images = _images(tiny, 2)
    with torch.no_grad():
        scores = tiny(images, sigrl.tokenize(VOCAB))
        permuted = tiny(images, sigrl.tokenize([VOCAB[i] for i in perm]))
    torch.testing.assert_close(permuted, scores[:, perm], rtol=1e-5, atol=1e-6)


def test_gradients_reach_trainable_parts_only():
    model = sigrl.create_model("vit-b16", freeze_vision_blocks=10,
                               vision_cfg={"image_size": 32, "layers": 12, "width": 64, "head_width": 32,
                                           "patch_size": 16},
                               text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                                         "layers": 1},
                               embed_dim=32).train()
    model(torch.randn(2, 3, 32, 32), sigrl.tokenize(VOCAB[:3])).sum().backward()
    for name, param in model.named_parameters():
        frozen = (name.startswith("clip.") and not name.startswith("clip.visual.")) or (
                  name.startswith(("clip.visual.conv1", "clip.visual.class_embedding",
                                      "clip.visual.positional_embedding", "clip.visual.ln_pre"))
                  or any(name.startswith(f"clip.visual.transformer.resblocks.{i}.") for i in range(10)))
        # ^ text tower, ViT stem and blocks 0-9 are frozen; blocks 10-11, ln_post, proj, GMC, SVFR train
        assert param.requires_grad == (not frozen), name
        if frozen:
            assert param.grad is None, name
        elif name.startswith(("clip.visual", "svfr", "gmc")) and "ln_" not in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_coop_context_is_learnable_and_changes_label_embeddings():
    model = sigrl.create_model("tiny", coop_n_ctx=4).train()
    ids = model.tokenize(VOCAB[:3])
    assert model.prompt_template.startswith("X X X X ")
    before = model.encode_text(ids).detach()
    model.encode_text(ids).sum().backward()
    assert model.prompt_context.vectors.grad.abs().sum() > 0
    with torch.no_grad():
        model.prompt_context.vectors.add_(1.0)
    assert not torch.allclose(model.encode_text(ids), before)


def _dense_gatv2_reference(layer, h):
    """Direct per-pair GATv2 written from the definition, loops and all."""
    num, heads, dim = h.shape[0], layer.heads, layer.head_dim
    wh = (h @ layer.lin.weight.t()).view(num, heads, dim)
    out = torch.zeros(num, heads, dim)
    for k in range(heads):
        for i in range(num):
            e = torch.stack([layer.att[k] @ F.leaky_relu(wh[i, k] + wh[j, k], 0.2) for j in range(num)])
            alpha = torch.softmax(e, dim=0)
            out[i, k] = sum(alpha[j] * wh[j, k] for j in range(num))
    return out.reshape(num, heads * dim)


def test_gatv2_matches_direct_reference():
    layer = DenseGATv2(in_dim=6, heads=3, head_dim=4, node_chunk=2).eval()
    h = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(h), _dense_gatv2_reference(layer, h), rtol=1e-5, atol=1e-6)


def test_create_model_rejects_unknown_names_and_overrides():
    assert {"tiny", "vit-b16"} <= set(sigrl.list_models())
    with pytest.raises(ValueError, match="unknown model config 'vit-h14'"):
        sigrl.create_model("vit-h14")
    with pytest.raises(ValueError, match="bogus"):
        sigrl.create_model("tiny", bogus=1)


def test_tokenize_rejects_bad_names():
    with pytest.raises(ValueError, match="non-empty list"):
        sigrl.tokenize([])
    with pytest.raises(ValueError, match="position 1"):
        sigrl.tokenize(["dog", ""])


def test_pretrained_weights_load_from_open_clip_checkpoint(tmp_path, tiny):
    path = tmp_path / "clip_tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.clip.state_dict().items()}}, path)
    torch.manual_seed(123)
    fresh = sigrl.create_model("tiny", pretrained=path)
    for key, value in tiny.clip.state_dict().items():
        torch.testing.assert_close(fresh.clip.state_dict()[key], value, rtol=0, atol=0)


def test_pretrained_weights_load_from_torchscript_archive(tmp_path, tiny):
    path = tmp_path / "openai_style.pt"
    clip = tiny.clip.eval()
    traced = torch.jit.trace(clip, (torch.randn(1, 3, 64, 64), sigrl.tokenize(["dog"])), check_trace=False)
    torch.jit.save(traced, str(path))
    torch.manual_seed(321)
    fresh = sigrl.create_model("tiny", pretrained=path)
    torch.testing.assert_close(fresh.clip.visual.proj, tiny.clip.visual.proj, rtol=0, atol=0)


def test_missing_or_mismatched_weights_are_clear_errors(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        sigrl.create_model("tiny", pretrained=tmp_path / "nowhere.pt")
    other = sigrl.create_model("tiny", embed_dim=32)
    path = tmp_path / "other.pt"
    torch.save(other.clip.state_dict(), path)
    with pytest.raises(ValueError, match=r"other\.pt does not match.*shape mismatch"):
        sigrl.create_model("tiny", pretrained=path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read CLIP weights from .*garbage\.pt"):
        sigrl.create_model("tiny", pretrained=garbage)


def test_public_names_after_a_bare_import():
    import numpy as np

    per_class, mean = sigrl.metrics.mean_average_precision(np.array([[0.9], [0.1]]), np.array([[1], [-1]]))
    assert mean == 1.0 and per_class.shape == (1,)
    assert callable(sigrl.load_checkpoint) and callable(sigrl.create_model) and callable(sigrl.tokenize)
