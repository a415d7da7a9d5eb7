"""The deepfake detector: export parity, exact masking of short windows, the live per-track windows (ring
buffer, strides, batching, resets), backends, offline clip scoring, and the committed default model on
identities it was not trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from swapwatch.engines.deepfake.detector import (
    DEFAULT_MODEL_DIR, DeepfakeDetector, WindowConfig, _TrackBuffer, crop_faces, detector_template, write_detector,
)
from swapwatch.engines.faces import ARCFACE_112, Face
from swapwatch.export.deepfake import (
    DetectorModels, FrameScorer, HeadConfig, MaskedGRU, ScorerConfig, TemporalHead, export_head, export_scorer,
    head_parity_inputs, load_checkpoint, save_checkpoint, scorer_parity_inputs,
)
from swapwatch.export.onnx_export import DETECTOR_TOLERANCE, check_parity, run_onnx

HELD_OUT = ("grid_lbbc2a", "grid_s2_swwp2s")  # validation identities of the default model (see its card)


def _randomise(models: DetectorModels, seed: int = 0) -> DetectorModels:
    """Non-trivial BN statistics and head normalisation, so parity is tested on realistic numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in models.scorer.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
        dim = models.head.config.feature_dim
        models.head.set_normalisation(torch.rand(dim, generator=g).numpy(), 0.5 + torch.rand(dim, generator=g).numpy())
    models.scorer.eval()
    models.head.eval()
    return models


def _tiny_models(window: int = 8, seed: int = 0, head_kind: str = "gru") -> DetectorModels:
    torch.manual_seed(seed)
    scorer = FrameScorer(ScorerConfig(64, (8, 16, 16, 16), (1, 1, 1, 1)))
    head = TemporalHead(HeadConfig(feature_dim=16, window=window, residual=head_kind == "residual",
                                   frame_mean=head_kind == "mean"))
    models = _randomise(DetectorModels(scorer, head, {"face_scale": 0.75, "threshold": 0.5}), seed)
    if head_kind != "gru":
        head.set_frame_classifier(scorer.classifier)  # the trained scorer's classifier, as training does
    if head_kind == "residual":
        with torch.no_grad():  # a trained correction, not the zero it starts from
            head.out.weight.normal_(0, 0.5)
    return models


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_detector")
    write_detector(_tiny_models(), folder)
    return folder


def _frame_and_faces(n_faces: int = 1, seed: int = 0, t: int = 0) -> tuple[np.ndarray, list[Face]]:
    rng = np.random.default_rng([seed, t])
    frame = rng.integers(0, 256, (240, 480, 3), dtype=np.uint8)
    faces = []
    for i in range(n_faces):
        lmk = ARCFACE_112.points[0] * 0.9 + np.array([40.0 + 200 * i, 60.0]) + rng.normal(0, 0.5, (5, 2))
        box = np.concatenate([lmk.min(0) - 15, lmk.max(0) + 15])
        faces.append(Face(box, 0.9, lmk, track_id=10 + i))
    return frame, faces


# ---- export ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [ScorerConfig(), ScorerConfig(64, (8, 16, 16, 16), (1, 1, 1, 1)),
                                    ScorerConfig(64, (8, 16, 16, 16), (1, 1, 1, 1), highpass=True, aux_map=True),
                                    ScorerConfig(64, (8, 16, 16), (1, 1, 1), highpass=True, aux_map=True,
                                                 local_topk=6)],
                         ids=["default-128", "tiny-64", "highpass-map-64", "local-evidence-64"])
def test_scorer_export_parity(tmp_path, config):
    torch.manual_seed(1)
    models = _randomise(DetectorModels(FrameScorer(config), TemporalHead(HeadConfig(config.feature_dim))))
    path = export_scorer(models.scorer, tmp_path / "scorer.onnx")
    report = check_parity(models.scorer, path, scorer_parity_inputs(config), tolerance=DETECTOR_TOLERANCE)
    assert report.worst_rel_error <= 1e-4 and report.outputs["features"].cosine >= 0.99999, report.summary()


@pytest.mark.parametrize("head_kind", ["gru", "residual", "mean"])
def test_head_export_parity_with_short_windows(tmp_path, head_kind):
    models = _tiny_models(window=20, head_kind=head_kind)
    path = export_head(models.head, tmp_path / "head.onnx")
    report = check_parity(models.head, path, head_parity_inputs(models.head.config), tolerance=DETECTOR_TOLERANCE)
    assert report.worst_rel_error <= 1e-4, report.summary()


def test_highpass_input_and_training_only_region_map(tmp_path):
    """The high-pass channels are the pixels minus a 5x5 binomial blur (a flat crop has none); the region map
    comes out at 1/4 of the crop size in training only, and a checkpoint round-trips both options."""
    torch.manual_seed(0)
    config = ScorerConfig(64, (8, 16, 16, 16), (1, 1, 1, 1), highpass=True, aux_map=True)
    scorer = FrameScorer(config).eval()
    crops = torch.rand(3, 3, 64, 64) * 255
    feats, logits, region = scorer.forward_train(crops)
    assert feats.shape == (3, 16) and logits.shape == (3,) and region.shape == (3, 1, 16, 16)
    f2, l2 = scorer(crops)
    assert torch.equal(f2, feats) and torch.equal(l2, logits)
    flat = torch.full((1, 3, 64, 64), 200.0)
    x = (flat - scorer.PIXEL_MEAN) * scorer.PIXEL_SCALE
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"),
                                         scorer.blur_kernel, groups=3)
    assert torch.allclose(blurred, x, atol=1e-6)  # the kernel sums to 1: no residual on a flat crop
    assert "blur_kernel" not in scorer.state_dict() and "aux.weight" in scorer.state_dict()
    path = save_checkpoint(DetectorModels(scorer, TemporalHead(HeadConfig(16))), tmp_path / "d.pt")
    loaded = load_checkpoint(path).scorer
    assert loaded.config == config and torch.equal(loaded(crops)[1], logits)


def test_local_evidence_scores_the_region_map():
    """With local evidence the features are the map's K largest cell logits, sorted, from the last stage (in
    the exported graph too), and the logit a positively weighted sum of them (more evidence, never a lower
    score); it needs the map."""
    torch.manual_seed(0)
    config = ScorerConfig(64, (8, 16, 16), (1, 1, 1), highpass=True, aux_map=True, local_topk=5)
    scorer = FrameScorer(config).eval()
    assert config.feature_dim == 5 and config.map_stage == 2
    crops = torch.rand(3, 3, 64, 64) * 255
    feats, logits, region = scorer.forward_train(crops)
    assert region.shape == (3, 1, 8, 8) and feats.shape == (3, 5)
    cells = region.flatten(1).sort(dim=1, descending=True).values
    assert torch.equal(feats, cells[:, :5])
    weights = torch.nn.functional.softplus(scorer.classifier.weight)
    assert (weights > 0).all() and torch.allclose(logits, (feats * weights).sum(1) + scorer.classifier.bias)
    f2, l2 = scorer(crops)
    assert torch.equal(f2, feats) and torch.equal(l2, logits)
    with pytest.raises(ValueError, match="aux_map"):
        ScorerConfig(64, (8, 16, 16), (1, 1, 1), local_topk=5)
    with pytest.raises(ValueError, match="cells"):
        ScorerConfig(64, (8, 16, 16), (1, 1, 1), aux_map=True, local_topk=65)


def test_yunet_stem_is_yunets_first_layers(yunet_onnx, tmp_path):
    """The yunet stem loaded from YuNet's ONNX computes exactly YuNet's own graph up to its second max pool
    (run by ONNX Runtime on the extracted sub-graph); a scorer on it exports with parity; a file that is not
    YuNet is a ModelError."""
    import onnx
    import onnxruntime as ort

    from swapwatch.errors import ModelError
    from swapwatch.export.deepfake import YuNetStem

    graph = onnx.load(str(yunet_onnx)).graph
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    sub = tmp_path / "stem.onnx"
    onnx.utils.extract_model(str(yunet_onnx), str(sub), [graph.input[0].name], [pools[1].output[0]])
    x = (np.random.default_rng(0).random((1, 3, 640, 640)) * 255).astype(np.float32)  # YuNet's fixed input
    expected = ort.InferenceSession(str(sub), providers=["CPUExecutionProvider"]).run(None, {graph.input[0].name: x})[0]
    stem = YuNetStem().eval()
    stem.load_onnx(yunet_onnx)
    with torch.no_grad():
        got = stem(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == (1, 64, 80, 80)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())

    config = ScorerConfig(64, (32,), (1,), aux_map=True, local_topk=4, stem="yunet")
    assert config.stride == 8 and config.feature_dim == 4
    scorer = FrameScorer(config)
    scorer.load_stem(yunet_onnx)
    assert torch.equal(scorer.stem.layers[0].weight, stem.layers[0].weight)
    models = DetectorModels(scorer.eval(), TemporalHead(HeadConfig(config.feature_dim)))
    path = export_scorer(models.scorer, tmp_path / "scorer.onnx")
    assert check_parity(models.scorer, path, scorer_parity_inputs(config),
                        tolerance=DETECTOR_TOLERANCE).worst_rel_error <= 1e-4

    with pytest.raises(ValueError, match="highpass"):
        ScorerConfig(64, (32,), (1,), highpass=True, stem="yunet")
    not_yunet = export_scorer(FrameScorer(ScorerConfig(64, (8, 16), (1, 1))), tmp_path / "other.onnx")
    with pytest.raises(ModelError, match="YuNet"):
        YuNetStem().load_onnx(not_yunet)

    # A file that is not ONNX at all: one ModelError naming it, from every reader of ONNX graphs.
    from swapwatch.engines.swap import read_emap
    from swapwatch.engines.swap.identity import _graph_normalisation

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08not a protobuf" * 10)
    for read in (YuNetStem().load_onnx, read_emap, _graph_normalisation):
        with pytest.raises(ModelError, match="cannot read ONNX graph garbage.onnx"):
            read(garbage)


def test_dlib_stem_is_dlibs_network_to_its_second_level(tmp_path):
    """The dlib stem loaded from a file in dlib's own format computes DlibFaceResNet.features(level 2) of the
    same file on the BGR crop turned to RGB; a scorer on it (150 px, a 17x17 evidence map) exports with parity;
    the stem's weights stay as dlib trained them (not re-initialised)."""
    from fixtures_dlib import write_fixture

    from swapwatch.export.deepfake import DlibStem
    from swapwatch.export.dlib_resnet import load_dlib_resnet

    dat = write_fixture(tmp_path / "dlib.dat", seed=3)
    config = ScorerConfig(150, (32,), (1,), aux_map=True, local_topk=8, stem="dlib")
    assert config.map_side == DlibStem.OUT_SIDE == 17 and config.feature_dim == 8
    scorer = FrameScorer(config)
    scorer.load_stem(dat)
    x = torch.from_numpy((np.random.default_rng(0).random((2, 3, 150, 150)) * 255).astype(np.float32))
    with torch.no_grad():
        expected = load_dlib_resnet(dat).features(x.flip(1), DlibStem.LEVEL)
        got = scorer.stem(x)
        _, _, region = scorer.forward_train(x)
    assert got.shape == (2, 64, 17, 17) and torch.equal(got, expected)
    assert region.shape == (2, 1, 17, 17)
    models = DetectorModels(scorer.eval(), TemporalHead(HeadConfig(config.feature_dim)))
    path = export_scorer(models.scorer, tmp_path / "scorer.onnx")
    assert check_parity(models.scorer, path, scorer_parity_inputs(config),
                        tolerance=DETECTOR_TOLERANCE).worst_rel_error <= 1e-4
    with pytest.raises(ValueError, match="150"):
        ScorerConfig(128, (32,), (1,), aux_map=True, local_topk=8, stem="dlib")
    with pytest.raises(ValueError, match="highpass"):
        ScorerConfig(150, (32,), (1,), highpass=True, stem="dlib")


def test_evidence_features_join_the_monotone_classifier(tmp_path):
    """--evidence appends the identity-independent evidence (engines/deepfake/evidence.py) of the scorer's own
    crop, oriented by EVIDENCE_SIGNS, to the local evidence's features: the frame's features end with exactly
    those columns, the graph exports with parity, and a checkpoint keeps the setting."""
    from swapwatch.engines.deepfake import EvidenceConfig, EvidenceFeatures
    from swapwatch.export.deepfake import EVIDENCE_SIGNS, load_checkpoint, save_checkpoint

    names = ("hf", "noise", "seam_chroma")
    config = ScorerConfig(128, (32,), (1,), aux_map=True, local_topk=4, evidence=names)
    assert config.feature_dim == 4 + len(names)
    scorer = FrameScorer(config).eval()
    x = torch.from_numpy((np.random.default_rng(1).random((2, 3, 128, 128)) * 255).astype(np.float32))
    with torch.no_grad():
        features, _ = scorer(x)
        expected = EvidenceFeatures(EvidenceConfig(size=128, features=names, stats=False))(x)
    signs = torch.tensor([EVIDENCE_SIGNS[n] for n in names])
    assert torch.allclose(features[:, 4:], expected * signs, atol=1e-6)
    models = DetectorModels(scorer, TemporalHead(HeadConfig(config.feature_dim, frame_mean=True, monotone=True)))
    path = export_scorer(scorer, tmp_path / "scorer.onnx")
    assert check_parity(scorer, path, scorer_parity_inputs(config),
                        tolerance=DETECTOR_TOLERANCE).worst_rel_error <= 1e-4
    save_checkpoint(models, tmp_path / "detector.pt")
    assert load_checkpoint(tmp_path / "detector.pt").scorer.config.evidence == names
    with pytest.raises(ValueError, match="local_topk"):
        ScorerConfig(128, (32,), (1,), evidence=("hf",))
    with pytest.raises(ValueError, match="unknown evidence"):
        ScorerConfig(128, (32,), (1,), aux_map=True, local_topk=4, evidence=("colour",))


def test_region_loss_targets_where_the_fake_differs():
    from swapwatch.engines.deepfake import DetectorTrainer

    real = np.full((32, 32, 3), 100, np.uint8)
    fake = real.copy()
    fake[8:16, 8:16] = 160  # altered block
    crops = np.stack([real, fake])
    perfect = torch.full((2, 1, 4, 4), -20.0)
    perfect[1, 0, 1, 1] = 20.0  # the pooled cell (8:16, 8:16)
    wrong = perfect.clone()
    wrong[1, 0, 1, 1] = -20.0
    assert DetectorTrainer._region_loss(perfect, crops) < 1e-6 < DetectorTrainer._region_loss(wrong, crops)


def test_region_loss_boundary_target_where_the_blend_mask_is_known():
    """With blend masks, a self-blended fake's target is its mask's boundary 4M(1-M) (max over a cell), not
    where its pixels changed; a fake without a mask (-1) keeps the pixel-difference target."""
    from swapwatch.engines.deepfake import DetectorTrainer

    real = np.full((32, 32, 3), 100, np.uint8)
    fake = real.copy()
    fake[8:24, 8:24] = 160  # the whole blended area changed
    crops = np.stack([real, fake, real, fake])
    soft = np.zeros((32, 32), np.float32)
    soft[8:24, 8:24] = 1.0
    soft[8:24, 8] = soft[8:24, 23] = soft[8, 8:24] = soft[23, 8:24] = 0.5  # a soft edge: boundary 1 there
    no_mask = np.full((32, 32), -1.0, np.float32)
    ring = torch.full((4, 4), -20.0)
    ring[1:3, 1:3] = 20.0  # the cells (8:16, 16:24)^2 all hold the edge, and all changed
    region = torch.full((4, 1, 4, 4), -20.0)
    region[1, 0] = region[3, 0] = ring
    assert DetectorTrainer._region_loss(region, crops, np.stack([soft, no_mask]).astype(np.float16)) < 1e-6
    hard = (soft == 1.0).astype(np.float32)  # a hard-edged mask has no boundary: its fake's target is empty
    assert DetectorTrainer._region_loss(region, crops, np.stack([hard, no_mask]).astype(np.float16)) > 1.0
    assert DetectorTrainer._region_loss(region, crops) < 1e-6  # no masks: the difference target


def test_masked_gru_is_a_gru():
    """With every step valid, MaskedGRU computes exactly torch.nn.GRU (same gate order and biases)."""
    torch.manual_seed(2)
    ours = MaskedGRU(6, 5)
    ref = torch.nn.GRU(6, 5, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(ours.input_proj.weight)
        ref.bias_ih_l0.copy_(ours.input_proj.bias)
        ref.weight_hh_l0.copy_(ours.hidden_proj.weight)
        ref.bias_hh_l0.copy_(ours.hidden_proj.bias)
        x = torch.randn(3, 7, 6)
        expected, _ = ref(x)
        got = ours(x, torch.ones(3, 7))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("head_kind", ["gru", "residual", "mean"])
@pytest.mark.parametrize("valid", [1, 5, 19, 20])
def test_short_windows_are_masked_exactly(tmp_path, valid, head_kind):
    """A window of L < W frames, left-padded with garbage, scores exactly as the unpadded L frames (PyTorch
    and the exported graph alike)."""
    models = _tiny_models(window=20, head_kind=head_kind)
    rng = np.random.default_rng(valid)
    real = rng.normal(0.3, 1.0, (2, valid, 16)).astype(np.float32)
    padded = rng.normal(5.0, 3.0, (2, 20, 16)).astype(np.float32)  # garbage in the padding
    padded[:, 20 - valid:] = real
    mask = np.zeros((2, 20), np.float32)
    mask[:, 20 - valid:] = 1.0
    with torch.no_grad():
        unpadded = models.head(torch.from_numpy(real), torch.ones(2, valid)).numpy()
        masked = models.head(torch.from_numpy(padded), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(masked, unpadded, atol=1e-6)
    path = export_head(models.head, tmp_path / "head.onnx")
    np.testing.assert_allclose(run_onnx(path, [(padded, mask)])[0][0], unpadded, atol=1e-5)


def test_residual_head_starts_as_the_mean_frame_logit():
    torch.manual_seed(3)
    scorer = FrameScorer(ScorerConfig(64, (8, 16, 16, 16), (1, 1, 1, 1))).eval()
    head = TemporalHead(HeadConfig(feature_dim=16, window=6, residual=True)).eval()
    head.set_frame_classifier(scorer.classifier)
    feats = torch.randn(2, 6, 16)
    mask = torch.tensor([[1.0] * 6, [0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        frame = scorer.classifier(feats).squeeze(2)
        expected = torch.stack([frame[0].mean(), frame[1, 3:].mean()])
        torch.testing.assert_close(head(feats, mask), expected)
    assert not any(p.requires_grad for p in head.frame_classifier.parameters()), "the copy stays frozen"


def test_frame_mean_head_is_the_mean_of_the_frame_logits_of_a_local_evidence_scorer(tmp_path):
    """--head mean: the window's logit is the masked mean of the scorer's own frame logits (a positive-weight
    classifier over the map's sorted cells here), with no GRU to train; the checkpoint round-trips it, and a
    classifier of the other kind is refused rather than copied wrongly."""
    torch.manual_seed(4)
    config = ScorerConfig(64, (8, 16, 16), (1, 1, 1), aux_map=True, local_topk=6)
    scorer = _randomise(DetectorModels(FrameScorer(config), TemporalHead(HeadConfig(6)))).scorer
    head = TemporalHead(HeadConfig(feature_dim=6, window=5, frame_mean=True, monotone=True)).eval()
    head.set_frame_classifier(scorer.classifier)
    assert not list(head.parameters()) or not any(p.requires_grad for p in head.parameters())
    assert not hasattr(head, "grus")
    crops = torch.from_numpy(scorer_parity_inputs(config, batches=(5,))[0][0])
    with torch.no_grad():
        feats, logits = scorer(crops)
        mask = torch.tensor([[0, 0, 1, 1, 1.0]])
        torch.testing.assert_close(head(feats[None], mask), logits[2:].mean()[None])
    path = save_checkpoint(DetectorModels(scorer, head), tmp_path / "d.pt")
    loaded = load_checkpoint(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.head(feats[None], mask), logits[2:].mean()[None])
    with pytest.raises(ValueError, match="MonotoneLinear"):
        head.set_frame_classifier(torch.nn.Linear(6, 1))
    with pytest.raises(ValueError, match="not both"):
        HeadConfig(residual=True, frame_mean=True)


# ---- the live detector ---------------------------------------------------------------------------------------


class _Counting:
    """An engine wrapper that records the batch size of every call."""

    def __init__(self, engine):
        self.engine = engine
        self.batches: list[int] = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def run(self, feeds):
        self.batches.append(len(next(iter(feeds.values()))))
        return self.engine.run(feeds)


def test_ring_buffer_keeps_the_last_w_in_order():
    buf = _TrackBuffer(4, 2)
    for i in range(6):
        buf.push(np.full(2, i, np.float32))
    feats, mask = buf.window()
    np.testing.assert_array_equal(feats[:, 0], [2, 3, 4, 5])
    assert mask.all()
    short = _TrackBuffer(4, 2)
    short.push(np.ones(2, np.float32))
    feats, mask = short.window()
    np.testing.assert_array_equal(mask, [0, 0, 0, 1])
    assert feats[3, 0] == 1 and not feats[:3].any()


def test_score_faces_windows_batching_and_resets(tiny_dir):
    det = DeepfakeDetector.load(tiny_dir, backend="onnxruntime", device="cpu")
    det.scorer = _Counting(det.scorer)
    det.head = _Counting(det.head)
    w = det.window
    for t in range(w - 1):
        frame, faces = _frame_and_faces(2, t=t)
        assert det.score_faces(frame, faces, t / 25) == {10: None, 11: None}
    frame, faces = _frame_and_faces(2, t=w)
    out = det.score_faces(frame, faces, w / 25)
    assert set(out) == {10, 11} and all(0.0 <= p <= 1.0 for p in out.values())
    assert det.scorer.batches == [2] * w, "both faces go through the scorer in one call per frame"
    assert det.head.batches == [2], "both windows go through the head in one call"
    # A reset track starts over; the other keeps its window.
    det.reset_track(10)
    frame, faces = _frame_and_faces(2, t=w + 1)
    out = det.score_faces(frame, faces, (w + 1) / 25)
    assert out[10] is None and out[11] is not None
    # Faces without a track id are ignored; a track that stays away is dropped.
    frame, faces = _frame_and_faces(1, t=0)
    faces[0].track_id = None
    assert det.score_faces(frame, faces, 1.0) == {}
    det.config = WindowConfig(max_missed=2)
    for _ in range(3):
        det.score_faces(frame, [], 2.0)
    assert det.latest(11) is None


def test_strides_and_short_min_window(tiny_dir):
    det = DeepfakeDetector.load(tiny_dir, backend="onnxruntime", device="cpu",
                                config=WindowConfig(min_window=3, score_stride=2, feature_stride=2))
    det.scorer = _Counting(det.scorer)
    scored = []
    for t in range(16):
        frame, faces = _frame_and_faces(1, t=t)
        scored.append(det.score_faces(frame, faces, t / 25)[10] is not None)
    # Features on frames 0, 2, 4, ...; the 3rd feature (frame 4) gives the first window, then every 2nd feature.
    assert len(det.scorer.batches) == 8
    assert [i for i, s in enumerate(scored) if s] == [4, 8, 12]
    assert det.latest(10) is not None and det.frame_probability(10) is not None


def test_backends_agree_and_onnx_is_rebuilt_from_the_checkpoint(tiny_dir, tmp_path):
    frames = [_frame_and_faces(1, t=t) for t in range(10)]
    results = {}
    for backend in ("onnxruntime", "torch"):
        det = DeepfakeDetector.load(tiny_dir, backend=backend, device="cpu", config=WindowConfig(min_window=1))
        results[backend] = [det.score_faces(f, faces, i / 25)[10] for i, (f, faces) in enumerate(frames)]
    np.testing.assert_allclose(results["torch"], results["onnxruntime"], atol=1e-4)
    # A folder with only detector.pt + detector.json (the repository ignores *.onnx) still loads with ONNX Runtime.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("detector.pt", "detector.json"):
        (bare / name).write_bytes((tiny_dir / name).read_bytes())
    det = DeepfakeDetector.load(bare, backend="onnxruntime", device="cpu", config=WindowConfig(min_window=1))
    got = [det.score_faces(f, faces, i / 25)[10] for i, (f, faces) in enumerate(frames)]
    np.testing.assert_allclose(got, results["onnxruntime"], atol=1e-6)


def test_score_clip_offline(tiny_dir):
    det = DeepfakeDetector.load(tiny_dir, backend="onnxruntime", device="cpu")
    clip = [(*_frame_and_faces(1, t=t), t / 25) for t in range(12)]
    scores = det.score_clip(clip, window_stride=4)
    track = scores.tracks[10]
    assert len(track.frame_probs) == 12
    assert track.window_times == pytest.approx([0.0, 4 / 25, 8 / 25, 11 / 25])  # from the 1st frame, every 4th, last
    assert scores.verdict in ("REAL", "FAKE") and 0 <= scores.score <= 1
    # The last window is the live detector's window after the same frames.
    live = DeepfakeDetector.load(tiny_dir, backend="onnxruntime", device="cpu")
    last = [live.score_faces(f, faces, t) for f, faces, t in clip][-1][10]
    assert last == pytest.approx(track.window_probs[-1], abs=1e-5)
    assert det.score_clip([(clip[0][0], [], 0.0)]).verdict == "NO_FACES"


def test_large_faces_are_shrunk_before_the_warp():
    """A face far larger than the crop is area-averaged first: the crop matches a crop of the pre-shrunk frame."""
    import cv2

    template = detector_template(128)
    rng = np.random.default_rng(0)
    frame = cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (1600, 1200), interpolation=cv2.INTER_CUBIC)
    lmk = ARCFACE_112.points[0] * 6 + np.array([400.0, 200.0])
    crop = crop_faces(frame, [lmk], template)[0]
    half = cv2.resize(frame, (800, 600), interpolation=cv2.INTER_AREA)
    ref = crop_faces(half, [lmk / 2], template)[0]
    assert np.abs(crop.astype(int) - ref.astype(int)).mean() < 3.0


# ---- the committed default model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_detector() -> DeepfakeDetector:
    if not (DEFAULT_MODEL_DIR / "detector.pt").is_file():
        pytest.fail(f"the default detector is missing from {DEFAULT_MODEL_DIR}")
    return DeepfakeDetector.load("default", backend="onnxruntime", device="cpu")


def test_default_model_files_are_small_and_described():
    sizes = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir() if p.is_file()}
    assert sum(sizes.values()) < 8 * 2**20, sizes
    info = json.loads((DEFAULT_MODEL_DIR / "detector.json").read_text())
    assert set(HELD_OUT) <= set(info["data"]["val_identities"])
    assert not set(HELD_OUT) & set(info["data"]["train_identities"])
    card = (DEFAULT_MODEL_DIR / "MODEL_CARD.md").read_text()
    assert "swapwatch train-detector" in card and "AUC" in card
    models = load_checkpoint(DEFAULT_MODEL_DIR / "detector.pt")
    assert models.head.config.window == info["window"]


def test_default_model_scores_tracks_on_a_shared_clip(default_detector, clips, yunet_onnx):
    from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker, YuNetDetector
    from swapwatch.engines.runtime import iter_video

    default_detector.reset()
    tracker = KeyframeTracker(YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu"),
                              FaceTracker(smoothing=FACE_SMOOTHING))
    clip = next(c for c in clips if c.stem == HELD_OUT[0])
    got = []
    for frame in iter_video(clip):
        if frame.index >= default_detector.window + 5:
            break
        faces = tracker.process(frame.image, frame.time)
        got.append(default_detector.score_faces(frame.image, faces, frame.time))
    assert all(v is None for out in got[: default_detector.window - 1] for v in out.values())
    final = got[-1]
    assert len(final) == 1 and 0.0 <= next(iter(final.values())) <= 1.0


# Acceptance (issues 5 and 15): on identities the default model was not trained on, with its two thresholds
# (detector.json, fitted on held-out people): a real clip is never called FAKE, a fake (the weight-free swap, a
# self-blend) is never called REAL and scores above the same person's real clip. UNCERTAIN is an allowed
# answer: it is what the model says when it cannot tell. Each (clip, version) is its own case; the cases the
# committed model gets wrong are marked xfail with the scores measured when it was trained (strict: if a
# retrained model gets them right, the marks must go).

# (clip, version) -> the window probability measured for the committed model, for the cases it gets wrong.
KNOWN_MISSES: dict[tuple[str, str], str] = {}
SOURCE_PHOTO = "max_Luciano.png"  # a held-out identity too
VERSIONS = ("real", "classic", "sbi-0", "sbi-1")  # sbi-N: one self-blending draw for the clip, seed N


def _held_out_versions(clip: Path, source_photo: Path, yunet_onnx: Path) -> dict[str, list]:
    """Frames of ``clip``: as they are, classic-swapped with the face of ``source_photo`` (the swap pipeline),
    and self-blended with one SBI draw for the whole clip (seeds 0 and 1, JPEG included)."""
    import cv2

    from swapwatch.engines.deepfake import SBIParams, SelfBlender
    from swapwatch.engines.faces import YuNetDetector
    from swapwatch.engines.runtime import iter_video
    from swapwatch.engines.swap import ClassicSwapper, SwapPipeline

    detector = YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu")
    pipeline = SwapPipeline(detector, ClassicSwapper())
    pipeline.add_source(cv2.imread(str(source_photo)))
    blender = SelfBlender()
    params = {f"sbi-{seed}": SBIParams.draw(np.random.default_rng(seed)) for seed in (0, 1)}
    out: dict[str, list] = {v: [] for v in VERSIONS}
    for frame in iter_video(clip):
        out["real"].append(frame.image)
        out["classic"].append(pipeline.process(frame.image, frame.time).frame)
        faces = detector.detect(frame.image)
        for name, p in params.items():
            out[name].append(blender(frame.image, faces[0].landmarks, p).image if faces else frame.image)
    return out


def expected_verdict(version: str) -> str:
    """What a right detector says of an acceptance case: REAL for the clip as it is, FAKE for its fakes."""
    return "REAL" if version == "real" else "FAKE"


def _clip_score(detector: DeepfakeDetector, frames: list[np.ndarray], yunet_onnx: Path):
    """Live conditions: YuNet + the smoothed tracker, full windows only, a window every 5 frames."""
    from swapwatch.engines.faces import FACE_SMOOTHING, FaceTracker, KeyframeTracker, YuNetDetector

    tracker = KeyframeTracker(YuNetDetector(yunet_onnx, backend="onnxruntime", device="cpu"),
                              FaceTracker(smoothing=FACE_SMOOTHING))
    items = [(f, tracker.process(f, i / 25), i / 25) for i, f in enumerate(frames)]
    return detector.score_clip(items, window_stride=5, min_window=detector.window)


@pytest.fixture(scope="module")
def held_out_scores(default_detector, shared_assets, yunet_onnx) -> dict[tuple[str, str], float]:
    scores = {}
    for clip_name in HELD_OUT:
        versions = _held_out_versions(shared_assets / "videos" / f"{clip_name}.mpg",
                                      shared_assets / "faces" / SOURCE_PHOTO, yunet_onnx)
        for version, frames in versions.items():
            scores[(clip_name, version)] = _clip_score(default_detector, frames, yunet_onnx).score
    print("held-out window probabilities:", {f"{c}/{v}": round(p, 3) for (c, v), p in scores.items()})
    return scores


def _case(clip: str, version: str):
    miss = KNOWN_MISSES.get((clip, version))
    marks = [pytest.mark.xfail(strict=True, reason=f"measured {miss} for the committed model (MODEL_CARD.md)")] \
        if miss else []
    return pytest.param(clip, version, marks=marks, id=f"{clip}-{version}")


@pytest.mark.parametrize("clip,version", [_case(c, v) for c in HELD_OUT for v in VERSIONS])
def test_default_model_verdicts_on_held_out_identities(default_detector, held_out_scores, clip, version):
    score = held_out_scores[(clip, version)]
    thresholds = default_detector.info.thresholds
    verdict = thresholds.verdict(score)
    wrong = "FAKE" if expected_verdict(version) == "REAL" else "REAL"
    assert verdict != wrong, (f"{clip}/{version}: window probability {score:.3f} is {verdict} (REAL below "
                              f"{thresholds.real:.3f}, FAKE at {thresholds.fake:.3f})")
    if version != "real":
        real = held_out_scores[(clip, "real")]
        assert score > real, f"{clip}/{version}: {score:.3f} is not above the same person's real clip ({real:.3f})"
