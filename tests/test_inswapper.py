"""inswapper_128 and w600k_r50 identities against InsightFace's own code (``INSwapper``, ``ArcFaceONNX``), on
seeded fixture graphs with the released files' interfaces and on real photos with YuNet landmarks. Nothing
here measures swap quality: the weights are random."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures_insightface import build_insightface_fixtures
from swapwatch.engines.faces import ARCFACE_112, Face, INSWAPPER_128, align_face
from swapwatch.engines.swap import ArcFaceEmbedder, InswapperSwapper, SourceIdentity, normed
from swapwatch.errors import ModelError

# InsightFace's estimate_norm calls an API scikit-image >= 0.26 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


@pytest.fixture(scope="session")
def insightface_files(tmp_path_factory) -> dict[str, Path]:
    return build_insightface_fixtures(tmp_path_factory.mktemp("insightface_fixtures"), seed=0)


@pytest.fixture(scope="session")
def photo_faces(face_photos, t1_jpg, yunet_onnx) -> list[tuple[str, np.ndarray, Face]]:
    """(name, image, face) for every face YuNet finds in the shared photos and InsightFace's t1.jpg."""
    from swapwatch.engines.faces import YuNetDetector

    if not yunet_onnx.is_file():
        pytest.skip(f"{yunet_onnx} missing")
    detector = YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu")
    found = []
    for path in [*face_photos, t1_jpg]:
        image = cv2.imread(str(path))
        assert image is not None, path
        found += [(f"{path.name}#{i}", image, face) for i, face in enumerate(detector.detect(image))]
    assert len(found) >= 8
    return found


@pytest.fixture(scope="session")
def embedder(insightface_files) -> ArcFaceEmbedder:
    return ArcFaceEmbedder(insightface_files["arcface"], backend="onnxruntime", device="cpu")


@pytest.fixture(scope="session")
def swappers(insightface_files, embedder) -> dict[str, InswapperSwapper]:
    return {v: InswapperSwapper(insightface_files[f"inswapper_{v}"], embedder, backend="onnxruntime", device="cpu")
            for v in ("fixed", "dynamic")}


def _insightface_face(face: Face, embedding: np.ndarray | None = None):
    from insightface.app.common import Face as IFFace

    ref = IFFace(bbox=face.box, kps=face.landmarks, det_score=face.score)
    if embedding is not None:
        ref.embedding = embedding
    return ref


def _count_runs(monkeypatch, engine) -> list[int]:
    """Record the batch size of every ``engine.run`` call."""
    calls: list[int] = []
    original = engine.run

    def run(feeds):
        calls.append(len(next(iter(feeds.values()))))
        return original(feeds)

    monkeypatch.setattr(engine, "run", run)
    return calls


# ---- identity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,mean_std", [("arcface", (127.5, 127.5)), ("arcface_mxnet", (0.0, 1.0))])
def test_embedder_matches_insightface(variant, mean_std, insightface_files, photo_faces):
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.utils import face_align

    ours = ArcFaceEmbedder(insightface_files[variant], backend="onnxruntime", device="cpu")
    ref = ArcFaceONNX(model_file=str(insightface_files[variant]))
    assert (ours.input_mean, ours.input_std) == (ref.input_mean, ref.input_std) == mean_std
    assert ours.template.size == ref.input_size[0] == 112 and ours.dim == 512
    same_crop, full = 0.0, 0.0
    for name, image, face in photo_faces:
        theirs_crop = face_align.norm_crop(image, face.landmarks, 112)
        expected = ref.get(image, _insightface_face(face))
        # Same crop in: the same embedding out (preprocessing and graph I/O are InsightFace's).
        same_crop = max(same_crop, float(np.abs(ours.embed_crops(theirs_crop[None])[0] - expected).max()))
        emb = ours.embed(image, face)
        assert emb.shape == (512,) and emb.dtype == np.float32, name
        full = max(full, float(np.abs(emb - expected).max()))
        cosine = float(emb @ expected / np.linalg.norm(emb) / np.linalg.norm(expected))
        assert cosine > 0.99999, name
    assert same_crop <= 1e-5
    # Whole path: InsightFace's estimate_norm runs scikit-image on float32 landmarks in float32, so its
    # matrix differs from our float64 Umeyama by up to ~2e-5 and a few crop pixels by one level (see
    # test_align); on this random net that moves embeddings (max |e| ~2) by up to ~5e-4.
    assert full <= 2e-3


def test_embedder_preprocessing_is_blob_from_images(embedder, photo_faces):
    crops = np.stack([align_face(image, face.landmarks, ARCFACE_112).crop for _, image, face in photo_faces[:4]])
    expected = cv2.dnn.blobFromImages(list(crops), 1.0 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    np.testing.assert_allclose(embedder.preprocess(crops), expected, atol=1e-6, rtol=0)


def test_embed_crops_batch_equals_single(embedder, photo_faces, monkeypatch):
    crops = np.stack([align_face(image, face.landmarks, ARCFACE_112).crop for _, image, face in photo_faces[:3]])
    singles = np.stack([embedder.embed_crops(c[None])[0] for c in crops])
    calls = _count_runs(monkeypatch, embedder.engine)
    batched = embedder.embed_crops(crops)
    assert calls == [3]  # w600k_r50's input batch is dynamic: one call, whatever the declared output says
    np.testing.assert_allclose(batched, singles, atol=1e-5, rtol=0)
    assert embedder.embed_crops(crops[:0]).shape == (0, 512)
    unit = normed(batched)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)


# ---- latent --------------------------------------------------------------------------------------


def test_latent_matches_insightface(insightface_files, swappers, photo_faces):
    from insightface.model_zoo.inswapper import INSwapper

    ref = INSwapper(model_file=str(insightface_files["inswapper_fixed"]))
    swapper = swappers["fixed"]
    np.testing.assert_array_equal(swapper.emap, ref.emap)
    for name, image, face in photo_faces:
        source = swapper.prepare_source(image, face)
        raw = source.extra["arcface"]
        np.testing.assert_array_equal(raw, swapper.embedder.embed(image, face))
        # InsightFace's INSwapper.get, verbatim in effect.
        expected = _insightface_face(face, raw).normed_embedding.reshape((1, -1))
        expected = np.dot(expected, ref.emap)
        expected /= np.linalg.norm(expected)
        assert source.swapper == "inswapper-128" and source.embedding.dtype == np.float32
        np.testing.assert_array_equal(source.embedding, expected[0], err_msg=name)  # bit-identical
        assert abs(float(np.linalg.norm(source.embedding)) - 1.0) < 1e-5


# ---- swap ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["fixed", "dynamic"])
def test_swap_matches_insightface(variant, insightface_files, swappers, photo_faces):
    from insightface.model_zoo.inswapper import INSwapper
    from insightface.utils import face_align

    swapper = swappers[variant]
    assert swapper.template is INSWAPPER_128
    assert swapper.batch == (1 if variant == "fixed" else None)
    ref = INSwapper(model_file=str(insightface_files[f"inswapper_{variant}"]))
    worst, changed = 0, 0
    for i, (name, image, face) in enumerate(photo_faces):
        # Each target gets the identity of the next photo's face.
        _, src_image, src_face = photo_faces[(i + 1) % len(photo_faces)]
        source = swapper.prepare_source(src_image, src_face)
        crop, matrix = swapper.swap_face(image, face, source)
        expected, ref_matrix = ref.get(image, _insightface_face(face),
                                       _insightface_face(src_face, source.extra["arcface"]), paste_back=False)
        assert crop.shape == expected.shape == (128, 128, 3) and crop.dtype == np.uint8
        np.testing.assert_allclose(matrix, ref_matrix, atol=1e-5, rtol=1e-6, err_msg=name)  # float32 skimage
        # InsightFace's own crop through our generate: bit-identical output.
        np.testing.assert_array_equal(swapper.generate(face_align.norm_crop(image, face.landmarks, 128)[None],
                                                       [source])[0], expected, err_msg=name)
        # Our crop: float32 vs float64 alignment flips a few crop pixels by one level (see test_align).
        worst = max(worst, int(np.abs(crop.astype(np.int16) - expected).max()))
        changed += int(np.abs(crop.astype(np.int16) - align_face(image, face.landmarks, INSWAPPER_128).crop).max() > 8)
    assert worst <= 1
    assert changed == len(photo_faces)  # the generator really rewrites every face


def test_generator_depends_on_identity(swappers, photo_faces):
    swapper = swappers["dynamic"]
    _, image, face = photo_faces[0]
    crop = align_face(image, face.landmarks, INSWAPPER_128).crop
    sources = [swapper.prepare_source(im, f) for _, im, f in photo_faces[1:3]]
    a, b = swapper.generate(np.stack([crop, crop]), sources)
    assert np.abs(a.astype(np.int16) - b).mean() > 1.0


@pytest.fixture(scope="module")
def batch_inputs(swappers, photo_faces):
    swapper = swappers["dynamic"]
    picks = photo_faces[:3]
    crops = np.stack([align_face(image, face.landmarks, INSWAPPER_128).crop for _, image, face in picks])
    sources = [swapper.prepare_source(im, f) for _, im, f in photo_faces[-3:]]
    return crops, sources


def test_dynamic_batch_is_one_call(swappers, batch_inputs, monkeypatch):
    swapper = swappers["dynamic"]
    crops, sources = batch_inputs
    singles = np.stack([swapper.generate(c[None], [s])[0] for c, s in zip(crops, sources)])
    calls = _count_runs(monkeypatch, swapper.engine)
    batched = swapper.generate(crops, sources)
    assert calls == [3]
    assert batched.shape == (3, 128, 128, 3) and batched.dtype == np.uint8
    assert int(np.abs(batched.astype(np.int16) - singles).max()) <= 1


def test_fixed_batch_loops(swappers, batch_inputs, monkeypatch):
    crops, sources = batch_inputs
    fixed = swappers["fixed"]
    calls = _count_runs(monkeypatch, fixed.engine)
    looped = fixed.generate(crops, sources)
    assert calls == [1, 1, 1]
    # Same weights in both variants: the loop gives what one dynamic call gives, in order.
    dynamic = swappers["dynamic"].generate(crops, sources)
    assert int(np.abs(looped.astype(np.int16) - dynamic).max()) <= 1
    assert fixed.generate(crops[:0], []).shape == (0, 128, 128, 3)


def test_torch_tensors_stay_torch(swappers, batch_inputs):
    torch = pytest.importorskip("torch")
    crops, sources = batch_inputs
    for swapper in swappers.values():
        blob = torch.from_numpy(swapper.preprocess(crops))
        latents = torch.from_numpy(np.stack([s.embedding for s in sources]))
        out = swapper.run(blob, latents)
        assert isinstance(out, torch.Tensor) and tuple(out.shape) == (3, 3, 128, 128)
        expected = swapper.run(blob.numpy(), latents.numpy())
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-5, rtol=0)


# ---- errors --------------------------------------------------------------------------------------


def test_generate_rejects_bad_inputs(swappers, batch_inputs):
    swapper = swappers["dynamic"]
    crops, sources = batch_inputs
    with pytest.raises(ValueError, match="sources"):
        swapper.generate(crops, sources[:2])
    with pytest.raises(ValueError, match="not by"):
        swapper.generate(crops[:1], [SourceIdentity(swapper="simswap-224", embedding=np.zeros(512), crop=None)])
    with pytest.raises(ValueError, match="uint8"):
        swapper.generate(crops.astype(np.float32), sources)
    with pytest.raises(ValueError, match="crops"):
        swapper.generate(crops[:, :112, :112], sources)


def test_not_an_inswapper_graph(insightface_files, embedder):
    # The recognition graph: one input, and its last initializer is no square emap.
    with pytest.raises(ModelError, match="inswapper"):
        InswapperSwapper(insightface_files["arcface"], embedder, backend="onnxruntime", device="cpu")
    with pytest.raises(ModelError, match="not found"):
        InswapperSwapper(insightface_files["arcface"].with_name("missing.onnx"), embedder)
