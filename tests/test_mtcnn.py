"""MTCNN with the real facenet-pytorch weights: strict loading, ONNX export parity, and the detector cascade
on PyTorch and ONNX Runtime against real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from swapwatch.engines.faces import Face, MTCNNConfig, MTCNNDetector, pyramid_scales
from swapwatch.errors import ModelError
from swapwatch.export.mtcnn import (NET_OUTPUTS, ONet, PNet, RNet, example_input, export_mtcnn_onnx,
                                    load_mtcnn_nets)
from swapwatch.export.onnx_export import ParityReport, check_parity, export_onnx

BACKENDS = ("torch", "onnxruntime")


@pytest.fixture(scope="module")
def nets(mtcnn_weights_dir):
    return load_mtcnn_nets(mtcnn_weights_dir)


@pytest.fixture(scope="module")
def onnx_paths(nets, tmp_path_factory):
    return export_mtcnn_onnx(nets, tmp_path_factory.mktemp("mtcnn_onnx"))


@pytest.fixture(scope="module")
def detectors(mtcnn_weights_dir, onnx_paths):
    onnx_dir = onnx_paths["pnet"].parent
    return {b: MTCNNDetector.from_weights(mtcnn_weights_dir, backend=b, device="cpu", onnx_dir=onnx_dir)
            for b in BACKENDS}


# -- weights --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("pnet", PNet), ("rnet", RNet), ("onet", ONet)])
def test_modules_match_the_real_state_dicts(mtcnn_weights_dir, name, cls):
    state = torch.load(mtcnn_weights_dir / f"{name}.pt", map_location="cpu", weights_only=True)
    ours = cls().state_dict()
    assert list(ours) == list(state)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in state.items()}


def test_load_is_strict_and_eval(nets):
    for net in nets:
        assert not net.training
    assert torch.equal(nets[0].conv1.bias, nets[0].state_dict()["conv1.bias"])


def test_missing_corrupt_or_mismatched_weights_are_model_errors(mtcnn_weights_dir, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_mtcnn_nets(tmp_path)
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        (tmp_path / name).write_bytes((mtcnn_weights_dir / name).read_bytes())
    (tmp_path / "rnet.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="rnet.pt"):
        load_mtcnn_nets(tmp_path)
    # A valid state_dict of the wrong net: strict loading must refuse it.
    (tmp_path / "rnet.pt").write_bytes((mtcnn_weights_dir / "onet.pt").read_bytes())
    with pytest.raises(ModelError, match="does not match RNet"):
        load_mtcnn_nets(tmp_path)


# -- ONNX export and parity -----------------------------------------------------------------------------


def _inputs(name: str, shapes: list[tuple[int, int, int]]) -> list[tuple[np.ndarray]]:
    return [(example_input(name, batch=b, height=h, width=w, seed=i).numpy(),) for i, (b, h, w) in enumerate(shapes)]


def test_pnet_parity_at_several_sizes(nets, onnx_paths):
    shapes = [(1, 12, 12), (1, 37, 53), (2, 120, 160), (1, 300, 400)]
    report = check_parity(nets[0], onnx_paths["pnet"], _inputs("pnet", shapes))
    assert isinstance(report, ParityReport) and report.ok
    assert set(report.max_abs_error) == {"prob", "reg"} and report.worst_rel_error <= 1e-4
    assert "pnet.onnx" in report.summary() and "ok" in report.summary()


@pytest.mark.parametrize("index, name", [(1, "rnet"), (2, "onet")])
def test_rnet_onet_parity_at_several_batch_sizes(nets, onnx_paths, index, name):
    report = check_parity(nets[index], onnx_paths[name], _inputs(name, [(1, 0, 0), (5, 0, 0), (33, 0, 0)]))
    assert set(report.max_abs_error) == set(NET_OUTPUTS[name]) and report.worst_rel_error <= 1e-4


def test_exported_graphs_have_dynamic_axes(onnx_paths):
    import onnxruntime as ort

    shapes = {}
    for name, path in onnx_paths.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shapes[name] = session.get_inputs()[0].shape
    assert shapes["pnet"] == ["batch", 3, "height", "width"]
    assert shapes["rnet"] == ["batch", 3, 24, 24]
    assert shapes["onet"] == ["batch", 3, 48, 48]


def test_parity_failure_is_a_model_error(nets, onnx_paths, mtcnn_weights_dir):
    drifted = load_mtcnn_nets(mtcnn_weights_dir)[0]
    with torch.no_grad():
        drifted.conv4_2.bias += 0.01
    with pytest.raises(ModelError, match="parity check failed"):
        check_parity(drifted, onnx_paths["pnet"], _inputs("pnet", [(1, 20, 20)]))


class _Unexportable(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_failed_export_leaves_nothing_behind(tmp_path):
    target = tmp_path / "broken.onnx"
    with pytest.raises(ModelError, match="boom"):
        export_onnx(_Unexportable(), (torch.zeros(1),), target, input_names=["x"], output_names=["y"])
    assert list(tmp_path.iterdir()) == []


# -- the detector ---------------------------------------------------------------------------------------


def _check_geometry(face: Face) -> None:
    x1, y1, x2, y2 = face.box
    assert x2 > x1 and y2 > y1
    pts = face.landmarks
    assert np.all((pts[:, 0] >= x1) & (pts[:, 0] <= x2) & (pts[:, 1] >= y1) & (pts[:, 1] <= y2)), face
    left_eye, right_eye, nose, mouth_left, mouth_right = pts
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def _detect_all(detectors, path) -> dict[str, list[Face]]:
    image = cv2.imread(str(path))
    assert image is not None, path
    return {b: d.detect(image) for b, d in detectors.items()}


def _assert_backends_agree(results: dict[str, list[Face]]) -> None:
    ref, ort_faces = results["torch"], results["onnxruntime"]
    assert len(ref) == len(ort_faces)
    for a, b in zip(ref, ort_faces):
        assert np.abs(a.box - b.box).max() <= 1.0
        assert np.abs(a.landmarks - b.landmarks).max() <= 1.0
        assert abs(a.score - b.score) <= 1e-3


def test_t1_has_six_faces(detectors, t1_jpg):
    results = _detect_all(detectors, t1_jpg)
    for backend, faces in results.items():
        assert len(faces) == 6, (backend, [f.to_json() for f in faces])
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
        for face in faces:
            assert face.score > 0.9
            _check_geometry(face)
    _assert_backends_agree(results)


def test_t1_six_faces_survive_flips_crops_and_scaling(detectors, t1_jpg):
    """Six is not an accident of one exact pixel grid: mirrored, shifted and rescaled t1 give six too."""
    image = cv2.imread(str(t1_jpg))
    variants = {"flip": image[:, ::-1], "crop3": image[3:, 3:], "crop7": image[7:-5, 5:],
                "x0.8": cv2.resize(image, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)}
    detector = detectors["onnxruntime"]
    for name, variant in variants.items():
        faces = detector.detect(np.ascontiguousarray(variant))
        assert len(faces) == 6, (name, [round(f.score, 3) for f in faces])


def test_one_face_in_each_photo(detectors, face_photos):
    assert face_photos
    for path in face_photos:
        results = _detect_all(detectors, path)
        for backend, faces in results.items():
            assert len(faces) == 1, (path.name, backend, [f.to_json() for f in faces])
            _check_geometry(faces[0])
        _assert_backends_agree(results)


def test_small_blank_and_bad_images(detectors):
    detector = detectors["onnxruntime"]
    assert detector.detect(np.zeros((10, 10, 3), np.uint8)) == []
    assert detector.detect(np.full((64, 80, 3), 127, np.uint8)) == []
    with pytest.raises(ValueError):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        detector.detect(np.zeros((64, 64), np.uint8))


def test_pyramid_covers_min_face_to_image_size():
    scales = pyramid_scales(120, 200, 20.0, 0.709)
    assert scales[0] == pytest.approx(12 / 20)
    assert all(120 * s >= 12 for s in scales) and 120 * scales[-1] * 0.709 < 12
    assert pyramid_scales(19, 400, 20.0, 0.709) == []  # smaller than the smallest face looked for
    assert pyramid_scales(16, 400, 12.0, 0.709) == [1.0]
    with pytest.raises(ValueError):
        MTCNNConfig(factor=1.0)


def test_onnx_cache_is_reused(mtcnn_weights_dir, tmp_path):
    first = MTCNNDetector.from_weights(mtcnn_weights_dir, backend="onnxruntime", onnx_dir=tmp_path)
    assert first.backend == "onnxruntime"
    stamps = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.onnx")}
    assert set(stamps) == {"pnet.onnx", "rnet.onnx", "onet.onnx"}
    MTCNNDetector.from_weights(mtcnn_weights_dir, backend="onnxruntime", onnx_dir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.onnx")} == stamps
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


# -- command line ---------------------------------------------------------------------------------------


def test_export_command(mtcnn_weights_dir, tmp_path, capsys):
    from swapwatch.cli import main

    out = tmp_path / "onnx"
    assert main(["export", "mtcnn", "--weights-dir", str(mtcnn_weights_dir), "--output-dir", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["pnet vs PyTorch", "rnet vs PyTorch", "onet vs PyTorch"]
    for line in lines:
        assert line.split(": ")[1].startswith("ok;"), line
        assert all(float(part.split()[0].rstrip(",")) <= 1e-4 for part in line.split(" rel ")[1:])  # every output
    assert sorted(p.name for p in out.iterdir()) == ["onet.onnx", "pnet.onnx", "rnet.onnx"]

    assert main(["export", "mtcnn", "--weights-dir", str(tmp_path / "nowhere"), "--output-dir", str(out)]) == 3
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "MTCNN weights not found" in err[0]


def test_dynamo_exporter_is_one_keyword_away(nets, tmp_path):
    """The fallback exporter named in export_onnx's docstring must keep working for a dynamic-size net."""
    from swapwatch.export.mtcnn import onnx_dynamic_axes

    path = export_onnx(nets[0], (example_input("pnet", batch=2, height=31, width=45),), tmp_path / "pnet.onnx",
                       input_names=["input"], output_names=NET_OUTPUTS["pnet"],
                       dynamic_axes=onnx_dynamic_axes("pnet"), dynamo=True)
    assert [p.name for p in tmp_path.iterdir()] == ["pnet.onnx"]  # one self-contained file, no temp left
    report = check_parity(nets[0], path, _inputs("pnet", [(1, 12, 12), (1, 37, 53)]))
    assert report.ok
