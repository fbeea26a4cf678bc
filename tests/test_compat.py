"""The torchvision shim: timm/open_clip import on CPU torch, and the shim is only active where it is needed."""

import subprocess
import sys

import pytest
import torchvision

import sigrl
from sigrl import _compat


def test_torchvision_timm_and_open_clip_import_after_sigrl():
    import open_clip
    import timm
    from torchvision.transforms import functional

    assert torchvision.__version__ and timm.__version__ and open_clip.__version__
    assert callable(functional.center_crop)
    assert sigrl.create_model  # package imported fine


@pytest.mark.skipif(_compat._library is None, reason="torchvision's C++ extension loads here: no shim needed")
def test_shim_is_needed_and_native_ops_stay_unavailable():
    plain = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    assert plain.returncode != 0 and "torchvision::nms does not exist" in plain.stderr
    import torch

    with pytest.raises(RuntimeError, match=r"Couldn't load custom C\+\+ ops"):  # schema only: no kernel, so PIL
        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


def test_import_sigrl_leaves_torch_alone_and_torchvision_still_imports_after_it():
    code = ("import sys, sigrl; assert 'torch' not in sys.modules, 'import sigrl loaded torch'; "
            "import torchvision, timm, open_clip; print(sigrl.create_model.__module__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sigrl.factory"
