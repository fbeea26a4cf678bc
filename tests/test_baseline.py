"""The MKT baseline (paper Table IV): SVFR off by config, trainable, evaluable and exported like SigRL."""

import pytest
import torch
import torch.nn.functional as F

import sigrl
from sigrl.checkpoint import read_checkpoint
from sigrl.cli import main as sigrl_main
from sigrl.training import recipe_for, train

VOCAB = ["red", "green", "circle", "square", "dog"]


def test_baseline_scores_patch_tokens_and_ignores_the_graph():
    torch.manual_seed(0)
    model = sigrl.create_model("mkt-tiny")
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        label_emb, graph_emb = model.encode_labels(sigrl.tokenize(VOCAB))
        scores = model.score_images(images, label_emb, graph_emb)
        other_graph = model.score_images(images, label_emb, torch.randn_like(graph_emb))
        global_feat, patches = model.encode_image(images)
    local = torch.einsum("bpd,cd->bpc", patches, label_emb).topk(16, dim=1).values.mean(dim=1)
    expected = 0.5 * (F.normalize(local, dim=-1) + F.normalize(global_feat @ label_emb.t(), dim=-1))
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(other_graph, scores, rtol=0, atol=0)


def test_baseline_is_sigrl_with_the_switch_off():
    torch.manual_seed(0)
    sigrl_model = sigrl.create_model("tiny")
    torch.manual_seed(0)
    baseline = sigrl.create_model("mkt-tiny")
    differing = {k for k, v in sigrl_model.config.to_dict().items() if baseline.config.to_dict()[k] != v}
    assert differing == {"use_svfr"}
    for (name, a), b in zip(sigrl_model.state_dict().items(), baseline.state_dict().values()):
        assert torch.equal(a, b), name  # same weights: only the switch differs
    unused = [p for m in (baseline.gmc, baseline.svfr) for p in m.parameters()]
    assert unused and not any(p.requires_grad for p in unused)
    assert all(p.requires_grad for m in (sigrl_model.gmc, sigrl_model.svfr) for p in m.parameters())
    assert {"mkt-tiny", "mkt-vit-b16"} <= set(sigrl.list_models())
    images, ids = torch.randn(2, 3, 64, 64), sigrl.tokenize(VOCAB)
    with torch.no_grad():
        assert not torch.allclose(sigrl_model(images, ids), baseline(images, ids))


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mkt-run")
    config = recipe_for("mkt-tiny", out=str(out), epochs=1, synthetic_train_images=64, progress=False)
    assert (config.lr, config.rank_scale) == (recipe_for("tiny").lr, recipe_for("tiny").rank_scale)
    train(config)
    return out


def test_baseline_trains_only_the_image_side(baseline_run):
    payload = read_checkpoint(baseline_run / "last.pt")
    assert payload["model_name"] == "mkt-tiny" and payload["model_config"]["use_svfr"] is False
    torch.manual_seed(42)  # the recipe's seed: the run's initial weights
    initial = sigrl.create_model("mkt-tiny").state_dict()
    changed = {k.split(".")[0] for k, v in initial.items() if not torch.equal(v, payload["model"][k])}
    assert changed == {"clip"}  # GMC and SVFR untouched
    assert not sigrl.load_checkpoint(baseline_run / "best.pt").config.use_svfr


def test_baseline_evaluates_exports_and_matches_onnxruntime(baseline_run, tmp_path, capsys):
    checkpoint = str(baseline_run / "best.pt")
    assert sigrl_main(["eval", "--checkpoint", checkpoint]) == 0
    assert "synthetic test" in capsys.readouterr().out
    engines = tmp_path / "engines"
    assert sigrl_main(["export", "--checkpoint", checkpoint, "--out", str(engines), "--config", "mkt-tiny"]) == 0
    assert sigrl_main(["parity", "--checkpoint", checkpoint, "--engines", str(engines), "--classes", "1", "12",
                       "--batch", "2", "--device", "cpu"]) == 0
    assert " NO" not in capsys.readouterr().out


def test_parameter_table_marks_the_modules_the_baseline_does_not_use():
    from sigrl.params import parameter_table

    rows = {name: (trainable, frozen) for name, trainable, frozen in parameter_table(sigrl.create_model("mkt-tiny"))}
    unused = [name for name in rows if name.endswith("unused (use_svfr false)")]
    assert [name.split(" ")[0] for name in unused] == ["GMC", "SDA", "VFR"]
    assert all(rows[name][0] == 0 for name in unused)
    assert not any("unused" in name for name, _, _ in parameter_table(sigrl.create_model("tiny")))
