"""Evaluation precision: fp32 by default (the paper's protocol), bf16 autocast only when asked for."""

import pytest
import torch

import sigrl
from sigrl.cli import main as sigrl_main
from sigrl.data import build_dataset
from sigrl.evaluation import predict, scoring_autocast


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    return sigrl.create_model("tiny"), build_dataset("synthetic", "test", image_size=64, num_images=24)


def _plain_fp32(model, dataset, device="cpu"):
    """Reference scores with no autocast anywhere."""
    with torch.no_grad():
        label_emb, graph_emb = model.encode_labels(model.tokenize(dataset.vocabulary).to(device))
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))]).to(device)
        return model.score_images(images, label_emb, graph_emb).cpu().numpy()


def test_default_is_fp32_even_inside_an_enclosing_autocast(model_and_data):
    model, dataset = model_and_data
    reference = _plain_fp32(model, dataset)
    vocab = {"own": dataset.vocabulary}
    torch.testing.assert_close(predict(model, dataset, vocab, batch_size=8)["own"], reference, rtol=0, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # e.g. called from a bf16 training step
        inside = predict(model, dataset, vocab, batch_size=8, precision="fp32")["own"]
    torch.testing.assert_close(inside, reference, rtol=0, atol=1e-6)


def test_bf16_is_an_explicit_option(model_and_data):
    model, dataset = model_and_data
    reference = _plain_fp32(model, dataset)
    bf16 = predict(model, dataset, {"own": dataset.vocabulary}, batch_size=8, precision="bf16")["own"]
    difference = abs(bf16 - reference).max()
    assert 1e-5 < difference < 0.1, difference  # really reduced precision, still the same model
    with pytest.raises(ValueError, match="precision"):
        scoring_autocast("cpu", "fp16")


def test_eval_command_takes_the_precision_flag(trained_tiny, capsys):
    checkpoint = str(trained_tiny[0] / "best.pt")
    assert sigrl_main(["eval", "--checkpoint", checkpoint, "--split", "val"]) == 0
    fp32 = capsys.readouterr().out
    assert sigrl_main(["eval", "--checkpoint", checkpoint, "--split", "val", "--precision", "bf16"]) == 0
    assert "synthetic val" in fp32 and "synthetic val" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sigrl_main(["eval", "--checkpoint", checkpoint, "--precision", "int4"])
    for precision in ("int8", "int8-qdq", "fp8"):  # engine precisions, not the PyTorch model's
        assert sigrl_main(["eval", "--checkpoint", checkpoint, "--precision", precision]) == 2
        assert f"{precision} is a precision of exported engines" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is present")
def test_cuda_evaluation_defaults_to_fp32(model_and_data):
    model, dataset = model_and_data
    model = model.cuda()
    try:
        vocab = {"own": dataset.vocabulary}
        default = predict(model, dataset, vocab, batch_size=8, device="cuda")["own"]
        fp32 = _plain_fp32(model, dataset, "cuda")
        bf16 = predict(model, dataset, vocab, batch_size=8, device="cuda", precision="bf16")["own"]
    finally:
        model.cpu()
    torch.testing.assert_close(default, fp32, rtol=0, atol=1e-6)
    assert abs(bf16 - fp32).max() > 10 * abs(default - fp32).max()
