"""SimSwap: generators and ArcFace against the released key layout, safe loading of the official formats,
ONNX export (parity with PyTorch, fp16, TensorRT where present), and the swapper on real photos.

Every checkpoint here is a seeded random stand-in in the official format (tests/fixtures_simswap.py): the
tests check loading, numerics of the exported graphs and the data path, never swap quality.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from fixtures_simswap import (ARCFACE_MODULE, build_arcface_checkpoint, build_arcface_model,
                              build_generator_checkpoint, build_malicious_checkpoint)
from swapwatch.engines.faces import FFHQ_512, SIMSWAP_224
from swapwatch.engines.swap import SimSwapSwapper, SourceIdentity, arcface_input, nearest_indices
from swapwatch.errors import ModelError
from swapwatch.export.arcface import DEFAULT_LAYERS, ResNet, load_arcface
from swapwatch.export.checkpoints import read_checkpoint, restricted_pickle_module
from swapwatch.export.simswap import SimSwapGenerator, example_inputs, load_generator

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


# -- fixtures (built once per session: each file is ~210-220 MB, like the real ones) ------------------------


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("simswap_checkpoints")


@pytest.fixture(scope="session")
def gen224_ckpt(ckpt_dir) -> Path:
    return build_generator_checkpoint(ckpt_dir / "people" / "latest_net_G.pth", 224, seed=224)


@pytest.fixture(scope="session")
def gen512_ckpt(ckpt_dir) -> Path:
    return build_generator_checkpoint(ckpt_dir / "512" / "550000_net_G.pth", 512, seed=512)


@pytest.fixture(scope="session")
def arcface_fixture(ckpt_dir):
    """(path, the original-style model it was pickled from)."""
    path = ckpt_dir / "arcface_model" / "arcface_checkpoint.tar"
    return path, build_arcface_checkpoint(path, seed=7)


@pytest.fixture(scope="session")
def arcface_ckpt(arcface_fixture) -> Path:
    return arcface_fixture[0]


@pytest.fixture(scope="session")
def gen224(gen224_ckpt) -> SimSwapGenerator:
    return load_generator(gen224_ckpt)


@pytest.fixture(scope="session")
def arcface(arcface_ckpt) -> ResNet:
    return load_arcface(arcface_ckpt)


def _cli(*argv: str) -> tuple[int, str, str]:
    from swapwatch.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _number_after(text: str, marker: str) -> float:
    match = re.search(re.escape(marker) + r"\s+([0-9.e+-]+|inf|nan)", text)
    assert match, f"{marker!r} not in {text!r}"
    return float(match.group(1))


def _parity_line(text: str, prefix: str) -> str:
    """The one line of the export command's output that starts with ``prefix``; it must give the verdict ok."""
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, f"{prefix!r} not once in {text!r}"
    assert lines[0][len(prefix):].startswith(" ok;"), lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("simswap_onnx")


@pytest.fixture(scope="session")
def exported_224(gen224_ckpt, onnx_dir):
    """`swapwatch export simswap --crop-size 224 --fp16`: (exit code, stdout, stderr, path)."""
    path = onnx_dir / "simswap_224.onnx"
    code, out, err = _cli("export", "simswap", "--checkpoint", str(gen224_ckpt), "--crop-size", "224",
                          "--output", str(path), "--fp16")
    return code, out, err, path


@pytest.fixture(scope="session")
def exported_arcface(arcface_ckpt, onnx_dir):
    path = onnx_dir / "simswap_arcface.onnx"
    code, out, err = _cli("export", "arcface", "--checkpoint", str(arcface_ckpt), "--output", str(path), "--fp16")
    return code, out, err, path


# -- the released key layout ------------------------------------------------------------------------------


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _conv(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def official_generator_layout(size: int) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of Generator_Adain_Upsample(3, 3, 512, n_blocks=9, deep=False), written out from
    SimSwap's models/fs_networks.py (224) and fs_networks_512.py (512), independently of our module."""
    base = 64 if size == 224 else 32
    keys = {**_conv("first_layer.1", 3, base, 7), **_bn("first_layer.2", base)}
    downs = ([("down0", 32, 64)] if size == 512 else []) + [("down1", 64, 128), ("down2", 128, 256),
                                                             ("down3", 256, 512)]
    for name, cin, cout in downs:
        keys |= _conv(f"{name}.0", cin, cout, 3) | _bn(f"{name}.1", cout)
    for i in range(9):
        for j in (1, 2):
            keys |= _conv(f"BottleNeck.{i}.conv{j}.1", 512, 512, 3)
            keys |= {f"BottleNeck.{i}.style{j}.linear.weight": (1024, 512),
                     f"BottleNeck.{i}.style{j}.linear.bias": (1024,)}
    ups = [("up3", 512, 256), ("up2", 256, 128), ("up1", 128, 64)] + ([("up0", 64, 32)] if size == 512 else [])
    for name, cin, cout in ups:
        keys |= _conv(f"{name}.1", cin, cout, 3) | _bn(f"{name}.2", cout)
    return keys | _conv("last_layer.1", base, 3, 7)


@pytest.mark.parametrize("size, n_keys, params", [(224, 123, 55_051_779), (512, 137, 55_079_427)])
def test_generator_matches_the_released_layout(size, n_keys, params):
    model = SimSwapGenerator(size)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_generator_layout(size)
    assert len(ours) == n_keys
    assert sum(p.numel() for p in model.parameters()) == params  # FIELD_NOTES: about 55.0 M and 55.1 M
    assert ours["BottleNeck.8.style2.linear.weight"] == (1024, 512)


def test_arcface_matches_simswaps_resnet(arcface_fixture):
    """Same keys and shapes as the original-style ResNet(IRBlock, [3, 4, 23, 3]) the fixture pickles."""
    _, original = arcface_fixture
    ours = {k: tuple(v.shape) for k, v in ResNet().state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in original.state_dict().items()}
    assert len(ours) == 796 and DEFAULT_LAYERS == (3, 4, 23, 3)
    assert sum(p.numel() for p in ResNet().parameters()) == 52_193_215
    assert ours["fc.weight"] == (512, 512 * 7 * 7) and ours["layer3.22.se.fc.0.weight"] == (16, 256)


# -- generator checkpoints -------------------------------------------------------------------------------


def test_released_format_generators_load_strictly(gen224_ckpt, gen512_ckpt, gen224):
    state = torch.load(gen224_ckpt, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # the release's own format
    assert gen224.crop_size == 224 and not gen224.training
    assert torch.equal(gen224.state_dict()["BottleNeck.4.conv1.1.weight"], state["BottleNeck.4.conv1.1.weight"])
    gen512 = load_generator(gen512_ckpt)
    assert gen512.crop_size == 512
    with torch.inference_mode():
        out = gen224(*example_inputs(224, batch=2))
    assert out.shape == (2, 3, 224, 224) and 0.0 <= out.min() and out.max() <= 1.0


def test_dataparallel_prefix_is_accepted(gen224_ckpt, gen224, tmp_path):
    state = torch.load(gen224_ckpt, map_location="cpu", weights_only=True)
    path = tmp_path / "prefixed.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    loaded = load_generator(path, 224)
    assert torch.equal(loaded.state_dict()["last_layer.1.weight"], gen224.state_dict()["last_layer.1.weight"])


def test_wrong_generator_size_names_keys_and_shapes(gen512_ckpt, gen224_ckpt):
    with pytest.raises(ModelError) as info:
        load_generator(gen512_ckpt, 224)
    message = str(info.value)
    assert "\n" not in message
    assert "unexpected keys (down0.0.weight" in message
    assert "first_layer.1.weight: checkpoint (32, 3, 7, 7) vs model (64, 3, 7, 7)" in message
    with pytest.raises(ModelError, match=r"missing keys \(down0\.0\.weight"):
        load_generator(gen224_ckpt, 512)


def test_other_architectures_are_refused_with_their_keys(arcface_ckpt, gen224_ckpt, tmp_path):
    state = load_arcface(arcface_ckpt).state_dict()
    path = tmp_path / "arcface_state.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"missing keys \(first_layer\.1\.weight.*unexpected keys \(conv1\.weight"):
        load_generator(path)
    with pytest.raises(ModelError, match=r"missing keys \(conv1\.weight"):
        load_arcface(gen224_ckpt)


@pytest.mark.parametrize("payload", [b"", b"PK\x03\x04 truncated zip", b"\x80\x02}q\x00."[:-1]])
def test_corrupt_checkpoints_are_one_line_model_errors(tmp_path, payload):
    path = tmp_path / "latest_net_G.pth"
    path.write_bytes(payload)
    for loader in (load_generator, load_arcface):
        with pytest.raises(ModelError) as info:
            loader(path)
        assert "\n" not in str(info.value) and "latest_net_G.pth" in str(info.value)
    with pytest.raises(ModelError, match="not found"):
        load_generator(tmp_path / "absent.pth")


# -- ArcFace: the pickled module, without SimSwap's code -----------------------------------------------------


def test_arcface_pickle_loads_without_the_original_module(arcface_fixture, arcface):
    path, original = arcface_fixture
    assert "models" not in sys.modules and ARCFACE_MODULE not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(ARCFACE_MODULE)
    with pytest.raises(Exception):  # plain torch.load needs the original classes
        torch.load(path, map_location="cpu", weights_only=False)
    assert type(arcface) is ResNet and arcface.layers == DEFAULT_LAYERS and not arcface.training
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.allclose(arcface(x), original(x), atol=1e-5, rtol=1e-5)
    # A fresh instance of our class: nothing from the pickle but the tensors.
    assert set(vars(arcface)) == set(vars(ResNet()))


def test_arcface_other_formats_and_depths(tmp_path, arcface):
    small = tmp_path / "legacy.tar"
    original = build_arcface_checkpoint(small, layers=(1, 1, 2, 1), seed=5, legacy_format=True)
    model = load_arcface(small)
    assert model.layers == (1, 1, 2, 1)
    x = torch.randn(1, 3, 112, 112)
    with torch.inference_mode():
        assert torch.allclose(model(x), original(x), atol=1e-5)
    # Older SimSwap checkouts: a dict {"model": DataParallel(ResNet)} with classes in models.models.
    wrapped = tmp_path / "wrapped.tar"
    dp_model, classes = build_arcface_model(layers=(1, 1, 1, 1), seed=6, module_name="models.models")
    from fixtures_simswap import temporary_module

    with temporary_module("models.models", classes):
        torch.save({"model": torch.nn.DataParallel(dp_model)}, wrapped)
    with torch.inference_mode():
        assert torch.allclose(load_arcface(wrapped)(x), dp_model(x), atol=1e-5)
    # A plain state_dict of the network; BatchNorm counters may be absent (files of old torch versions).
    plain = tmp_path / "state.pth"
    torch.save({k: v for k, v in arcface.state_dict().items() if not k.endswith("num_batches_tracked")}, plain)
    assert torch.equal(load_arcface(plain).fc.weight, arcface.fc.weight)


def test_malicious_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = build_malicious_checkpoint(tmp_path / "arcface_checkpoint.tar", marker)
    with pytest.raises(ModelError, match=r"refusing to unpickle global 'posix\.system'|'os\.system'"):
        load_arcface(path)
    with pytest.raises(ModelError, match="not a plain state_dict"):
        load_generator(path)  # torch's weights_only loader refuses it too
    assert not marker.exists()


def test_unlisted_classes_and_roots_are_refused(tmp_path):
    class Foreign(torch.nn.Module):  # a module class from some other package, pickled by reference
        pass

    Foreign.__module__, Foreign.__qualname__ = "evil.models", "Foreign"
    from fixtures_simswap import temporary_module

    with temporary_module("evil.models", {"Foreign": Foreign}):
        torch.save(Foreign(), tmp_path / "foreign.tar")
    with pytest.raises(ModelError, match=r"'evil\.models\.Foreign'"):
        load_arcface(tmp_path / "foreign.tar")
    torch.save(torch.nn.Conv2d(3, 3, 1), tmp_path / "conv.tar")  # allowed class, wrong root
    with pytest.raises(ModelError, match="holds a pickled Conv2d, expected ResNet"):
        load_arcface(tmp_path / "conv.tar")


def test_restricted_unpickler_refuses_anything_unlisted():
    import pickle

    module = restricted_pickle_module({}, source="test")
    for payload in (pickle.dumps(print), pickle.dumps(eval), pickle.dumps(torch.nn.Conv2d)):
        with pytest.raises(ModelError, match="refusing to unpickle global"):
            module.Unpickler(io.BytesIO(payload)).load()
    with pytest.raises(ModelError):
        read_checkpoint(Path("/nonexistent/arcface_checkpoint.tar"), allowed={})


# -- export: parity, fp16, TensorRT, the command line ---------------------------------------------------------


def _graph_io(path: Path) -> dict[str, list]:
    model = onnx.load(str(path), load_external_data=False)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    return {v.name: dims(v) for v in [*model.graph.input, *model.graph.output]}


def test_export_simswap_224_command(exported_224):
    code, out, err, path = exported_224
    assert code == 0, err
    assert _number_after(_parity_line(out, "simswap-224 vs PyTorch:"), "rel") <= 1e-3
    assert _graph_io(path) == {"target": ["batch", 3, 224, 224], "source": ["batch", 512],
                               "output": ["batch", 3, 224, 224]}


def test_fp16_graph_is_checked_and_keeps_fp32_io(exported_224):
    code, out, err, path = exported_224
    assert code == 0, err
    assert _number_after(_parity_line(out, "simswap-224 fp16 vs fp32:"), "rel") <= 2e-2
    fp16 = onnx.load(str(path.with_name("simswap_224.fp16.onnx")))
    assert {v.type.tensor_type.elem_type for v in [*fp16.graph.input, *fp16.graph.output]} == {
        onnx.TensorProto.FLOAT}
    big = [t for t in fp16.graph.initializer if np.prod(t.dims) > 1000]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)


def test_export_simswap_512_command(gen512_ckpt, tmp_path):
    path = tmp_path / "simswap_512.onnx"
    code, out, err = _cli("export", "simswap", "--checkpoint", str(gen512_ckpt), "--output", str(path))
    assert code == 0, err
    assert _number_after(_parity_line(out, "simswap-512 vs PyTorch:"), "rel") <= 1e-3
    assert _graph_io(path)["output"] == ["batch", 3, 512, 512]


def test_export_arcface_command(exported_arcface):
    code, out, err, path = exported_arcface
    assert code == 0, err
    line = _parity_line(out, "arcface vs PyTorch:")
    assert _number_after(line, "rel") <= 1e-3 and _number_after(line, "cos") >= 0.99999
    line = _parity_line(out, "arcface fp16 vs fp32:")
    assert _number_after(line, "rel") <= 2e-2 and _number_after(line, "cos") >= 0.999
    assert _graph_io(path) == {"input": ["batch", 3, 112, 112], "embedding": ["batch", 512]}


def test_export_command_errors_are_one_line(tmp_path, gen512_ckpt):
    bad = tmp_path / "latest_net_G.pth"
    bad.write_bytes(b"not a checkpoint")
    for target in ("simswap", "arcface"):
        code, out, err = _cli("export", target, "--checkpoint", str(bad), "--output", str(tmp_path / "x.onnx"))
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 3 and len(lines) == 1 and "latest_net_G.pth" in lines[0], err
    code, _, err = _cli("export", "simswap", "--checkpoint", str(gen512_ckpt), "--crop-size", "224",
                        "--output", str(tmp_path / "x.onnx"))
    assert code == 3 and "down0.0.weight" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif(HAS_TENSORRT, reason="checks the message shown where TensorRT is absent")
def test_trt_flag_without_tensorrt_is_a_clear_error(gen224_ckpt, tmp_path):
    code, _, err = _cli("export", "simswap", "--checkpoint", str(gen224_ckpt), "--output",
                        str(tmp_path / "g.onnx"), "--trt")
    assert code == 4 and "--trt needs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.onnx").exists()  # refused before the (long) export


@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed or no CUDA GPU is visible")
def test_trt_engines_match_the_graph(gen224_ckpt, tmp_path, monkeypatch):
    code, out, err = _cli("export", "simswap", "--checkpoint", str(gen224_ckpt), "--output",
                          str(tmp_path / "g.onnx"), "--fp16", "--trt")
    assert code == 0, err
    assert _number_after(_parity_line(out, "simswap-224 TensorRT fp32 vs ONNX fp32:"), "rel") <= 1e-2
    assert _number_after(_parity_line(out, "simswap-224 TensorRT fp16 vs ONNX fp32:"), "rel") <= 2e-2


# -- the swapper ------------------------------------------------------------------------------------------------


def test_nearest_resize_and_arcface_input_match_simswaps_torch_code():
    rng = np.random.default_rng(0)
    for size in (224, 512):
        crop = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        # SimSwap: ToTensor + Normalize on the RGB crop, then F.interpolate(size=(112, 112)) (nearest).
        t = torch.from_numpy(crop[..., ::-1].copy()).permute(2, 0, 1).float().div(255)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        t = (t - mean[:, None, None]) / std[:, None, None]
        expected = F.interpolate(t[None], size=(112, 112)).numpy()
        assert np.allclose(arcface_input(crop), expected, atol=1e-6)
        assert np.array_equal(nearest_indices(size, 112),
                              F.interpolate(torch.arange(size, dtype=torch.float32)[None, None], size=112)
                              .long().flatten().numpy())


@pytest.fixture(scope="session")
def photo_faces(face_photos, yunet_onnx):
    """(image, best face) for the first three shared photos, found with YuNet."""
    from swapwatch.engines.faces import YuNetDetector

    detector = YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu")
    found = []
    for path in face_photos[:3]:
        image = cv2.imread(str(path))
        faces = detector.detect(image)
        assert faces, f"no face in {path.name}"
        found.append((image, faces[0]))
    return found


@pytest.fixture(scope="session")
def onnx_swapper(exported_224, exported_arcface) -> SimSwapSwapper:
    assert exported_224[0] == 0 and exported_arcface[0] == 0
    return SimSwapSwapper.from_onnx(exported_224[3], exported_arcface[3], backend="onnxruntime", device="cpu")


@pytest.fixture(scope="session")
def torch_swapper(gen224, arcface) -> SimSwapSwapper:
    return SimSwapSwapper.from_modules(gen224, arcface, device="cpu")


def _crops(swapper: SimSwapSwapper, photo_faces) -> np.ndarray:
    from swapwatch.engines.faces import align_face

    return np.stack([align_face(img, face.landmarks, swapper.template).crop for img, face in photo_faces])


def test_swapper_end_to_end_on_real_photos(onnx_swapper, photo_faces):
    assert onnx_swapper.name == "simswap-224" and onnx_swapper.template is SIMSWAP_224
    image, face = photo_faces[0]
    source = onnx_swapper.prepare_source(image, face)
    assert source.swapper == "simswap-224" and source.embedding.shape == (512,)
    assert source.embedding.dtype == np.float32 and abs(np.linalg.norm(source.embedding) - 1.0) < 1e-5
    assert source.crop.shape == (224, 224, 3)
    crops = _crops(onnx_swapper, photo_faces)
    batch = onnx_swapper.generate(crops, [source] * 3)
    assert batch.shape == (3, 224, 224, 3) and batch.dtype == np.uint8
    singles = np.concatenate([onnx_swapper.generate(crops[i:i + 1], [source]) for i in range(3)])
    assert np.abs(batch.astype(int) - singles.astype(int)).max() <= 1


def test_onnx_and_torch_swappers_agree(onnx_swapper, torch_swapper, photo_faces):
    image, face = photo_faces[1]
    a = onnx_swapper.prepare_source(image, face)
    b = torch_swapper.prepare_source(image, face)
    assert np.abs(a.embedding - b.embedding).max() < 1e-4
    crops = _crops(torch_swapper, photo_faces)[:2]
    out_onnx = onnx_swapper.generate(crops, [a, a])
    out_torch = torch_swapper.generate(crops, [b, b])
    assert np.abs(out_onnx.astype(int) - out_torch.astype(int)).max() <= 1


def test_swapper_512_uses_ffhq_alignment(gen512_ckpt, arcface, photo_faces):
    swapper = SimSwapSwapper.from_modules(load_generator(gen512_ckpt), arcface, device="cpu")
    assert swapper.name == "simswap-512" and swapper.template is FFHQ_512
    image, face = photo_faces[2]
    source = swapper.prepare_source(image, face)
    out = swapper.generate(_crops(swapper, photo_faces)[:1], [source])
    assert out.shape == (1, 512, 512, 3) and out.dtype == np.uint8


def test_swapper_rejects_mismatched_inputs(torch_swapper, photo_faces):
    crops = _crops(torch_swapper, photo_faces)[:2]
    good = SourceIdentity("simswap-224", np.ones(512, np.float32) / np.sqrt(512), None)
    with pytest.raises(ValueError, match="2 target crops but 1"):
        torch_swapper.generate(crops, [good])
    with pytest.raises(ValueError, match="prepared by 'inswapper_128'"):
        torch_swapper.generate(crops[:1], [SourceIdentity("inswapper_128", good.embedding, None)])
    with pytest.raises(ValueError, match="uint8 BGR crops"):
        torch_swapper.generate(crops[:1, :112, :112], [good])
    assert torch_swapper.generate(crops[:0], []).shape == (0, 224, 224, 3)
