"""The autoencoder swapper that gives the detector a learned generator's fakes (engines/deepfake/aefakes.py):
it learns to reconstruct the training faces, is cached by content, keeps the Swapper contract, and
``--swappers classic,autoencoder`` adds one re-rendered track per real track to a training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swapwatch.engines.deepfake import (
    REAL, AutoencoderConfig, AutoencoderNet, AutoencoderSwapper, MediaItem, train_autoencoder,
)
from swapwatch.engines.deepfake.aefakes import _crops, _tensor
from swapwatch.engines.deepfake.tracks import TrackBuilder, make_swappers
from swapwatch.errors import InputError

SMALL = AutoencoderConfig(steps=60, batch=8, width=16, seed=1)


@pytest.fixture(scope="module")
def face_tracks(shared_assets, yunet_onnx):
    builder = TrackBuilder(yunet_onnx, max_frames=16)
    tracks = []
    for path, identity in ((shared_assets / "videos" / "grid_bbaf2n.mpg", "grid_bbaf2n"),
                           (shared_assets / "faces" / "max_Bryan.png", "max_Bryan")):
        tracks += builder.build(MediaItem(path=path, label=REAL, identity=identity, origin="test"))
    assert len(tracks) == 2
    return tracks


def _reconstruction_error(net, crops: np.ndarray) -> float:
    x = _tensor(crops)
    with torch.inference_mode():
        return float((net(x, x) - x).abs().mean())


def test_autoencoder_learns_the_faces_and_is_cached(face_tracks, tmp_path):
    crops, owners = _crops(face_tracks, SMALL.size)
    assert crops.shape[1:] == (64, 64, 3) and sorted(set(owners.tolist())) == [0, 1]
    torch.manual_seed(SMALL.seed)
    untrained = _reconstruction_error(AutoencoderNet(SMALL).eval(), crops)
    lines: list[str] = []
    net = train_autoencoder(face_tracks, SMALL, cache_dir=tmp_path, echo=lines.append)
    trained = _reconstruction_error(net, crops)
    assert trained < 0.6 * untrained, (trained, untrained)
    assert any("training on" in line for line in lines)
    [cached] = tmp_path.glob("autoencoder-*.pt")

    # The same tracks and settings load the cached weights instead of training again.
    again: list[str] = []
    loaded = train_autoencoder(face_tracks, SMALL, cache_dir=tmp_path, echo=again.append)
    assert again == [f"autoencoder swapper: loaded {cached.name} ({len(crops)} training faces)"]
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # Other settings are another file.
    train_autoencoder(face_tracks, AutoencoderConfig(steps=2, batch=4, width=16, seed=2), cache_dir=tmp_path,
                      echo=lambda line: None)
    assert len(list(tmp_path.glob("autoencoder-*.pt"))) == 2


def test_autoencoder_swapper_keeps_the_swapper_contract(face_tracks):
    net = train_autoencoder(face_tracks, AutoencoderConfig(steps=3, batch=4, width=16), echo=lambda line: None)
    swapper = AutoencoderSwapper(net, 64)
    video = face_tracks[0]
    source = swapper.prepare_source(video.rois[0], video.face(0))
    assert source.extra["style"].shape == (128,) and source.crop.shape == (64, 64, 3)
    crops, _ = _crops([video], 64)
    out = swapper.generate(crops[:3], [source] * 3)
    assert out.shape == (3, 64, 64, 3) and out.dtype == np.uint8
    assert swapper.generate(crops[:0], []).shape == (0, 64, 64, 3)
    with pytest.raises(ValueError, match="uint8 target crops"):
        swapper.generate(crops[:1, :32], [source])
    with pytest.raises(ValueError, match="2 target crops but 1 sources"):
        swapper.generate(crops[:2], [source])


def test_autoencoder_alone_is_refused(face_tracks):
    with pytest.raises(InputError, match="classic,autoencoder"):
        make_swappers(["autoencoder"], tracks=face_tracks, autoencoder_steps=1)
    with pytest.raises(InputError, match="none given"):
        make_swappers(["classic", "autoencoder"])


def test_training_with_the_autoencoder_adds_a_rerendered_track_per_real_track(shared_assets, yunet_onnx,
                                                                             tmp_path):
    from swapwatch.commands.train_detector import config_from_args
    from swapwatch.engines.deepfake import collect_items, prepare_data

    from test_training import _args, _two_clips_and_a_photo

    media = _two_clips_and_a_photo(shared_assets)
    runs = {}
    for name, swappers in (("classic", "classic"), ("ae", "classic,autoencoder")):
        config, spec = config_from_args(_args(tmp_path / name, media, "--swappers", swappers,
                                              "--autoencoder-steps", "5")[1])
        runs[name] = prepare_data(collect_items(spec), config, detector_model=yunet_onnx, echo=lambda s: None)
    plain, ae = runs["classic"], runs["ae"]
    for track in ae.train_real + ae.val_real:
        swaps = ae.swaps_of(track)
        renders = [s for s in swaps if s.origin.startswith("autoencoder:")]
        assert len(renders) == 1
        [render] = renders
        assert render.kind == "selfswap" and render.source == track.identity and render.label != REAL
        assert render.rois.shape == track.rois.shape and not np.array_equal(render.rois, track.rois)
        # The classic swaps are the same as without the autoencoder (same seeded draws).
        classic = [s.origin for s in swaps if not s.origin.startswith("autoencoder:")]
        twin = next(t for t in plain.train_real + plain.val_real if t.origin == track.origin)
        assert classic == [s.origin for s in plain.swaps_of(twin)]
