"""A learned autoencoder swapper trained here, so that the detector sees a learned generator's output.

The fakes the default detector trained on are self-blends and the weight-free classic swap: no learned
generator. FaceForensics++'s "Deepfakes" and DeepFaceLive, two of the manipulations a monitor meets, are
autoencoders: a face squeezed through a narrow code and decoded again at 64-256 px, then pasted back. This is a
small model of that family (FIELD_NOTES.md, "Identity-independent evidence of a face swap"), trained on the
training people's own faces by reconstruction:

- the **structure** of the target (pose, expression, where the eyes and mouth are) goes through a narrow
  spatial code (8x8x16 at 64 px);
- the **appearance** comes from the source face as AdaIN parameters (the mean and spread of its encoder
  features), as SimSwap injects an identity vector; trained with another frame of the same person as source,
  so the code must carry the structure and the AdaIN vector the look.

At swap time a source of another person gives the target's structure in the source's colours and texture,
and the target's own face (a self-swap) gives a re-rendering: in both cases a decoded face at the template's
size with a learned generator's traces (lost fine detail and noise, smoothed texture, decoder patterns),
pasted back by :class:`~swapwatch.engines.deepfake.tracks.SwapFaker` under the usual feathered mask. It is a
source of training fakes, not a product swapper: its faces are blurry on purpose-built CPU budgets.

Training is seeded and cached under the data cache (``autoencoder-<key>.pt``, the key a hash of the tracks and
the settings), so the final model and every calibration fold use the same generator.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from swapwatch.engines.faces import Face, align_face, ffhq_template
from swapwatch.engines.swap import SourceIdentity, Swapper

__all__ = ["AutoencoderConfig", "AutoencoderNet", "AutoencoderSwapper", "train_autoencoder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoencoderConfig:
    size: int = 64  # the template's crop size (FaceForensics++ Deepfakes worked at 64 px)
    code_channels: int = 16  # the structure code's channels at size/8
    width: int = 32  # channels of the first layer (x2 per level)
    steps: int = 600
    batch: int = 32
    lr: float = 2e-3
    seed: int = 0


class _AdaIN(nn.Module):
    def __init__(self, channels: int, style: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.affine = nn.Linear(style, 2 * channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class AutoencoderNet(nn.Module):
    """(target, source) BGR in [0, 1] at (N, 3, S, S) -> the decoded face (N, 3, S, S) in [0, 1]."""

    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()) -> None:
        super().__init__()
        w = config.width
        chans = (w, 2 * w, 4 * w)

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
                                 nn.Conv2d(cout, cout, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True))

        self.encoder = nn.Sequential(down(3, chans[0]), down(chans[0], chans[1]), down(chans[1], chans[2]))
        self.to_code = nn.Conv2d(chans[2], config.code_channels, 1)
        self.style = nn.Sequential(nn.Linear(2 * chans[2], 128), nn.LeakyReLU(0.2, inplace=True))
        self.from_code = nn.Conv2d(config.code_channels, chans[2], 3, 1, 1)
        ups = (chans[2], chans[1], chans[0], chans[0])
        self.up_convs = nn.ModuleList(nn.Conv2d(ups[i], ups[i + 1], 3, 1, 1) for i in range(3))
        self.up_norms = nn.ModuleList(_AdaIN(ups[i + 1], 128) for i in range(3))
        self.to_rgb = nn.Conv2d(chans[0], 3, 3, 1, 1)

    def encode_structure(self, target: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.encoder(target * 2 - 1))

    def encode_style(self, source: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(source * 2 - 1)
        return self.style(torch.cat([feats.mean((2, 3)), feats.std((2, 3))], dim=1))

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode_structure(target), self.encode_style(source))

    def decode(self, code: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.from_code(code), 0.2)
        for conv, norm in zip(self.up_convs, self.up_norms):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = F.leaky_relu(norm(conv(x), style), 0.2)
        return torch.sigmoid(self.to_rgb(x))


def _crops(tracks: Sequence, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's face aligned to the template at ``size``: (M, S, S, 3) uint8 and each crop's person."""
    template = ffhq_template(size)
    crops, owners = [], []
    people = {name: i for i, name in enumerate(sorted({t.identity for t in tracks}))}
    for track in tracks:
        for roi, lmk in zip(track.rois, track.landmarks):
            crops.append(align_face(roi, lmk, template, border_mode=cv2.BORDER_REPLICATE).crop)
            owners.append(people[track.identity])
    return np.stack(crops), np.asarray(owners)


def _tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0


def _jitter(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A small random shift, scale and flip per crop: the network must decode faces, not copy pixels."""
    n = batch.shape[0]
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.1
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.08
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, padding_mode="border", align_corners=False)
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def _cache_key(crops: np.ndarray, owners: np.ndarray, config: AutoencoderConfig) -> str:
    digest = hashlib.sha256(repr(sorted(asdict(config).items())).encode())
    digest.update(np.ascontiguousarray(owners).tobytes())
    digest.update(np.ascontiguousarray(crops[:, ::4, ::4]).tobytes())  # a thumbnail of every crop is enough
    return digest.hexdigest()[:16]


def train_autoencoder(tracks: Sequence, config: AutoencoderConfig = AutoencoderConfig(), *,
                      cache_dir: Path | None = None, echo=log.info) -> AutoencoderNet:
    """Fit :class:`AutoencoderNet` on ``tracks`` (real face tracks) by reconstruction; cached when
    ``cache_dir`` is given (the same tracks and config load the same weights)."""
    crops, owners = _crops(tracks, config.size)
    net = AutoencoderNet(config)
    path = Path(cache_dir) / f"autoencoder-{_cache_key(crops, owners, config)}.pt" if cache_dir else None
    if path is not None and path.is_file():
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        echo(f"autoencoder swapper: loaded {path.name} ({len(crops)} training faces)")
        return net.eval()
    people = int(owners.max()) + 1
    echo(f"autoencoder swapper: training on {len(crops)} faces of {people} people, {config.steps} steps")
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    data = _tensor(crops)
    by_owner = [np.flatnonzero(owners == k) for k in range(people)]
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.steps)
    start, loss_avg = time.monotonic(), None
    net.train()
    for step in range(config.steps):
        idx = rng.integers(len(data), size=config.batch)
        # The source is another crop of the same person (a photo: itself), so the look must come from it.
        src = np.array([rng.choice(by_owner[owners[i]]) for i in idx])
        target = data[idx]
        out = net(_jitter(target, gen), _jitter(data[src], gen))
        # The decoder is asked for the unjittered face: structure comes through the code, not a pixel copy.
        loss = F.l1_loss(out, target) + 0.5 * F.mse_loss(
            F.avg_pool2d(out, 4), F.avg_pool2d(target, 4))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
        if (step + 1) % max(config.steps // 5, 1) == 0:
            echo(f"autoencoder step {step + 1}/{config.steps}: loss {loss_avg:.4f} "
                 f"({time.monotonic() - start:.0f} s)")
    net.eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        tmp.replace(path)
    return net


class AutoencoderSwapper(Swapper):
    """:class:`AutoencoderNet` behind the :class:`Swapper` interface (for :class:`SwapFaker`)."""

    name = "autoencoder"
    learned = True

    def __init__(self, net: AutoencoderNet, size: int) -> None:
        self.net = net.eval()
        self.template = ffhq_template(size)

    def prepare_source(self, image_bgr: np.ndarray, face: Face) -> SourceIdentity:
        crop = align_face(image_bgr, face.landmarks, self.template, border_mode=cv2.BORDER_REPLICATE).crop
        with torch.inference_mode():
            style = self.net.encode_style(_tensor(crop[None]))[0].numpy()
        return SourceIdentity(swapper=self.name, embedding=None, crop=crop, extra={"style": style})

    def generate(self, target_crops: np.ndarray, sources: list[SourceIdentity]) -> np.ndarray:
        targets = self.checked_batch(target_crops, sources)
        if not len(targets):
            return targets.copy()
        style = torch.from_numpy(np.stack([s.extra["style"] for s in sources]))
        with torch.inference_mode():
            out = self.net.decode(self.net.encode_structure(_tensor(targets)), style)
        return (out.permute(0, 2, 3, 1).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
