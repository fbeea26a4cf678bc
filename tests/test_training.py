"""Training on CPU: the tiny recipe learns, resume is exact, checkpoint writes are atomic, DDP matches one process."""

import itertools
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from data_fixtures import write_nus_wide, write_single_positive

import sigrl
from sigrl.checkpoint import read_checkpoint
from sigrl.cli import main as sigrl_main
from sigrl.data import build_dataset
from sigrl.evaluation import predict
from sigrl.training import recipe_for, train
from sigrl.training.train import Trainer, epoch_batches, lr_factor


def _weights(path):
    return read_checkpoint(path)["model"]


def _assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@pytest.mark.slow
def test_tiny_recipe_learns_far_above_chance(trained_tiny):
    out, result = trained_tiny
    assert result["steps"] == 434
    test = build_dataset("synthetic", "test", image_size=64)
    chance = float((test.labels > 0).float().mean())  # mAP of random scores ≈ mean label frequency
    model = sigrl.load_checkpoint(out / "best.pt")
    from sigrl.evaluation import evaluate_dataset
    test_map = evaluate_dataset(model, "synthetic", split="test")["synthetic test"]["mAP"]
    # Threshold from docs/training.md (tiny): 400 steps gave 0.68-0.71 for every seed, so >= 0.60
    # is ~3 spreads below the measured runs while chance is ~0.35. Seed 42 here scores ~0.67.
    assert chance < 0.40
    assert test_map >= 60.0, f"test mAP {test_map:.2f} after {result['steps']} steps (chance {100 * chance:.1f})"


@pytest.mark.slow
def test_eval_command_writes_json_report_and_table(trained_tiny, tmp_path, capsys):
    out, _ = trained_tiny
    report_path = tmp_path / "report.json"
    assert sigrl_main(["eval", "--checkpoint", str(out / "best.pt"), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    row = report["results"]["synthetic test"]
    assert report["data"] == "synthetic" and set(row) == {"mAP", "P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5"}
    assert f"{row['mAP']:.2f}" in capsys.readouterr().out


def test_load_checkpoint_returns_eval_model_with_vocabulary(trained_tiny):
    out, _ = trained_tiny
    model = sigrl.load_checkpoint(out / "last.pt")
    assert not model.training
    assert model.vocabulary == build_dataset("synthetic", "val", image_size=64).vocabulary
    payload = torch.load(out / "last.pt", map_location="cpu", weights_only=True)  # safe format
    assert {"optimizer", "teacher", "rng", "step"} <= set(payload["train"])


def _small_run(out, **overrides):
    config = {"out": str(out), "epochs": 2, "synthetic_train_images": 160, "progress": False}
    return recipe_for("tiny", **{**config, **overrides})


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    train(_small_run(tmp_path / "whole"))  # 5 steps per epoch, 10 steps
    interrupted = tmp_path / "interrupted"
    assert train(_small_run(interrupted, max_steps=3))["steps"] == 3  # stops mid-epoch, last.pt at step 3
    assert read_checkpoint(interrupted / "last.pt")["step"] == 3
    assert train(_small_run(interrupted), resume=True)["steps"] == 10
    _assert_same_weights(_weights(interrupted / "last.pt"), _weights(tmp_path / "whole" / "last.pt"))


def test_resume_from_the_command_line_keeps_the_stored_recipe(tmp_path):
    out = tmp_path / "cli"
    common = ["train", "--config", "tiny", "--out", str(out), "--no-progress"]
    assert sigrl_main([*common, "--epochs", "1", "--synthetic-train-images", "96", "--max-steps", "1"]) == 0
    assert sigrl_main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    payload = read_checkpoint(out / "last.pt")
    assert payload["step"] == 3 and payload["train"]["config"]["synthetic_train_images"] == 96


def test_interrupted_checkpoint_write_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    train(_small_run(tmp_path, epochs=1))
    good = (tmp_path / "last.pt").read_bytes()

    def crash_midway(payload, handle, *args, **kwargs):
        handle.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr("sigrl.checkpoint.torch.save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        train(_small_run(tmp_path, epochs=2), resume=True)
    assert (tmp_path / "last.pt").read_bytes() == good
    assert read_checkpoint(tmp_path / "last.pt")["step"] == 5
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_lr_schedule_warms_up_then_decays_to_min():
    factors = [lr_factor(s, 100, 10, 1e-4, 1e-7) for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[100] == pytest.approx(1e-3)


def test_ranks_split_each_global_batch():
    single = epoch_batches(50, 8, epoch=3, seed=1, rank=0, world=1)
    halves = [epoch_batches(50, 8, epoch=3, seed=1, rank=r, world=2) for r in range(2)]
    assert len(single) == 6 and all(len(b) == 8 for b in single)
    assert [a + b for a, b in zip(*halves)] == single
    assert epoch_batches(50, 8, epoch=4, seed=1, rank=0, world=1) != single


def test_ddp_with_two_gloo_processes_matches_single_process(tmp_path):
    args = ["train", "--config", "tiny", "--epochs", "1", "--synthetic-train-images", "64", "--batch-size", "16",
            "--max-steps", "3", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "sigrl.cli", *args, "--out", str(tmp_path / "single")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "sigrl.cli", *args, "--out", str(tmp_path / "ddp")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert read_checkpoint(tmp_path / "ddp" / "last.pt")["step"] == 3
    ddp_weights, single_weights = _weights(tmp_path / "ddp" / "last.pt"), _weights(tmp_path / "single" / "last.pt")
    width = 64
    # Entries whose true gradient is exactly zero: a bias inside a softmax over patches (SDA, VFR) and the
    # attention key bias (softmax shift invariance). Their gradients are pure rounding noise, which Adam
    # rescales to about ±lr per step, so for them only that bound holds: |Δ| <= 2 · steps · lr.
    gradient_free = {"svfr.sda_proj.bias": slice(None), "svfr.vfr_proj.bias": slice(None)}
    gradient_free.update({k: slice(width, 2 * width) for k in single_weights if k.endswith("attn.in_proj_bias")})
    # Elsewhere an entry whose gradient is nearly zero can meet the same fate: which ones depends on the CPU's
    # GEMM kernels (on an AVX2 EPYC one c_fc entry of 3.4M moved 4.3e-5). So: every entry within Adam's bound,
    # and all but a handful (at most 1 in 100,000) within 1e-5.
    over, total = 0, 0
    for key, single in single_weights.items():
        diff = (ddp_weights[key] - single).abs()
        assert diff.max() <= 2 * 3 * 3e-3, f"{key}: DDP differs from single process by {diff.max():.2e}"
        if key in gradient_free:
            diff[gradient_free[key]] = 0
        over, total = over + int((diff > 1e-5).sum()), total + diff.numel()
    assert over <= total * 1e-5, f"{over} of {total} weights differ between DDP and one process by more than 1e-5"


def test_single_positive_training_with_em_apl_on_voc_layout(tmp_path, monkeypatch):
    write_single_positive(str(tmp_path / "voc"), "voc", num_train=40, num_val=6)
    # images kept apart from the label files, as in VOCdevkit: the readers follow --image-root
    shutil.copytree(tmp_path / "voc", tmp_path / "images", ignore=shutil.ignore_patterns("*.npy"))
    moved = list((tmp_path / "voc").rglob("*.jpg"))
    assert len(moved) == 46
    for image in moved:
        image.unlink()
    config = recipe_for("tiny", "em_apl", "voc", data_root=str(tmp_path / "voc"), image_root=str(tmp_path / "images"),
                        out=str(tmp_path / "run"), epochs=6, batch_size=8, progress=False)
    assert (config.spml_alpha, config.spml_beta, config.spml_warmup) == (0.2, 0.02, 5)
    precisions = []

    def recording_predict(*args, **kwargs):  # the real scorer, recording the precision it was asked for
        precisions.append(kwargs.get("precision"))
        return predict(*args, **kwargs)

    # sigrl.training.train (the attribute) is the train function; the module is only in sys.modules
    monkeypatch.setattr(sys.modules["sigrl.training.train"], "predict", recording_predict)
    train(config)
    assert precisions == ["fp32"] * 6  # EM_APL pseudo-labels are scored in fp32, once per epoch
    labeler = read_checkpoint(tmp_path / "run" / "last.pt")["train"]["labeler"]
    assert labeler["last_epoch"] == 6 and labeler["pseudo_negatives"].sum() > 0
    report = tmp_path / "voc.json"
    assert sigrl_main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["results"]["voc test"]["mAP"] > 0


def test_zero_shot_training_and_zsl_gzsl_eval_on_nus_wide_layout(tmp_path, capsys):
    (tmp_path / "nus").mkdir()
    write_nus_wide(str(tmp_path / "nus"))
    config = recipe_for("tiny", data="nus-wide", data_root=str(tmp_path / "nus"), out=str(tmp_path / "run"),
                        epochs=1, batch_size=4, progress=False)
    train(config)
    assert sigrl.load_checkpoint(tmp_path / "run" / "best.pt").vocabulary[:2] == \
        build_dataset("nus-wide", "val", str(tmp_path / "nus"), 64).vocabulary[:2]
    assert sigrl_main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt")]) == 0
    printed = capsys.readouterr().out
    assert "ZSL" in printed and "GZSL" in printed


def test_spml_loss_refuses_fully_labelled_data(tmp_path, capsys):
    with pytest.raises(ValueError, match="SPML losses need single-positive data"):
        recipe_for("tiny", "em", "synthetic")
    # NUS-WIDE's reader returns full labels, not one observed positive: refused, not silently trained
    assert sigrl_main(["train", "--config", "tiny", "--data", "nus-wide", "--data-root", str(tmp_path),
                       "--loss", "an", "--out", str(tmp_path / "run")]) == 2
    assert "full labels, not one observed positive" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_spml_recipe_keeps_adam_at_a_constant_lr_and_zero_shot_keeps_cosine():
    for loss in ("an", "iun", "em", "em_apl"):
        for data in ("coco", "voc"):
            spml = recipe_for("vit-b16", loss, data, random_init=True)
            assert (spml.optimizer, spml.lr, spml.schedule, spml.warmup_epochs) == ("adam", 1e-5, "constant", 0)
    assert all(lr_factor(s, 100, 0, 1e-5, 1e-7, "constant") == 1.0 for s in range(101))
    zero_shot = recipe_for("vit-b16", data="nus-wide", random_init=True)
    assert (zero_shot.optimizer, zero_shot.lr, zero_shot.schedule, zero_shot.warmup_epochs) == ("adamw", 1e-4,
                                                                                                 "cosine", 2)
    assert lr_factor(10, 100, 0, 1e-4, 1e-7, zero_shot.schedule) < 1.0
    with pytest.raises(ValueError, match="schedule"):
        recipe_for("tiny", schedule="linear")


def test_constant_schedule_leaves_the_lr_untouched_in_training(tmp_path):
    config = _small_run(tmp_path, epochs=1, synthetic_train_images=64, schedule="constant")
    train(config)
    groups = read_checkpoint(tmp_path / "last.pt")["train"]["optimizer"]["param_groups"]
    assert groups and all(g["lr"] == pytest.approx(config.lr * g["lr_scale"]) for g in groups)


def test_vit_b16_training_needs_pretrained_weights_or_an_explicit_random_init(tmp_path, capsys):
    for config in ("vit-b16", "mkt-vit-b16"):
        assert sigrl_main(["train", "--config", config, "--out", str(tmp_path / config)]) == 2
        err = capsys.readouterr().err
        assert "--pretrained" in err and "--random-init" in err and err.count("\n") == 1
    assert sigrl_main(["train", "--config", "vit-b16", "--random-init", "--pretrained", "w.pt"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert recipe_for("vit-b16", random_init=True).pretrained is None  # explicit: accepted
    assert recipe_for("tiny").random_init  # tiny has no pretrained weights: random init is its recipe
    assert not list(tmp_path.iterdir())


def test_val_fraction_zero_trains_on_every_image_and_keeps_the_last_epoch(tmp_path, capsys):
    (tmp_path / "nus").mkdir()
    write_nus_wide(str(tmp_path / "nus"))
    common = {"data_root": str(tmp_path / "nus"), "epochs": 2, "batch_size": 3, "progress": False}
    assert len(Trainer(recipe_for("tiny", data="nus-wide", out=str(tmp_path / "a"), **common)).train_set) == 9
    config = recipe_for("tiny", data="nus-wide", out=str(tmp_path / "run"), val_fraction=0, **common)
    result = train(config)
    assert result["best_val_mAP"] is None and result["steps"] == 2 * (10 // 3)  # all 10 training images
    _assert_same_weights(_weights(tmp_path / "run" / "best.pt"), _weights(tmp_path / "run" / "last.pt"))
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    assert best["data"]["val_fraction"] == 0 and best["step"] == result["steps"]
    assert sigrl_main(["eval", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--split", "val"]) == 2
    assert "no held-out validation split" in capsys.readouterr().err
    with pytest.raises(ValueError, match="own validation images"):
        recipe_for("tiny", val_fraction=0.2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        recipe_for("tiny", data="nus-wide", val_fraction=1.0)


def test_coop_training_learns_only_the_context_vectors(tmp_path):
    config = recipe_for("tiny", out=str(tmp_path), epochs=1, synthetic_train_images=64, coop_n_ctx=4,
                        progress=False)
    train(config)
    torch.manual_seed(config.seed)
    initial = sigrl.create_model("tiny", coop_n_ctx=4)  # built like the run's model: same initial weights
    trained = read_checkpoint(tmp_path / "last.pt")["model"]
    changed = {k for k, v in initial.state_dict().items() if not torch.equal(v, trained[k])}
    assert changed == {"prompt_context.vectors"}
