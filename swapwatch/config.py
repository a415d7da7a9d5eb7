"""All of swapwatch's settings in one dataclass tree, with defaults that work offline on a CPU."""

from __future__ import annotations

from dataclasses import dataclass, field


# Pixels an image may declare before any of them is decoded (uploads, CLI photos): a 2.8 MB PNG can declare
# 30000x30000 (2.7 GB decoded). 50 MP is above any common camera photo (48 MP phone sensors): 150 MB decoded.
MAX_IMAGE_PIXELS = 50_000_000


@dataclass(frozen=True)
class DetectorConfig:
    name: str = "yunet"  # mtcnn | yunet | scrfd
    backend: str = "auto"  # auto | tensorrt | onnxruntime | torch
    device: str = "auto"  # auto | cpu | cuda
    model_path: str | None = None  # an explicit model file instead of the registry's (SCRFD: det_10g.onnx)
    score_threshold: float | None = None  # None: the detector's own default


@dataclass(frozen=True)
class TrackingConfig:
    detect_every: int = 1  # run the detector every k frames, track with optical flow in between
    smoothing: bool = True  # One Euro filter on landmarks and boxes against jitter


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    max_sessions: int = 4
    max_upload_bytes: int = 10 * 1024 * 1024
    # Source photos: refused above max_image_pixels (from the header, before decoding) and kept at most
    # max_source_side pixels on their longer side (the swappers' crops are 512 px at most; no full-size copy).
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_source_side: int = 2048
    # Source photos in memory: at most max_sources in all and max_sources_per_client per client address; a new
    # upload evicts a source no session uses (the client's own first), never one in use (stream/sources.py).
    # Live frames above max_frame_pixels are scaled down to fit (the session processes and sends that size;
    # its websocket says so); /detect refuses videos above max_detect_pixels (413, from the header).
    max_frame_pixels: int = 1920 * 1080
    max_detect_pixels: int = 3840 * 2160
    max_sources: int = 64
    max_sources_per_client: int = 8
    # An upload (/sources, /detect) that sends nothing for this long is dropped with 408; /detect's analysis slot
    # is taken only once the whole upload has arrived.
    upload_read_timeout: float = 10.0
    # A connection with no request in progress for header_timeout s is closed: one that has not sent a complete
    # request head since it opened (slow-header clients), or a kept-alive one that has not started another.
    header_timeout: float = 10.0
    # Multipart fields other than `file` (the page sends none): read under this limit, 413 past it.
    max_form_field_bytes: int = 64 * 1024
    # Access. No token: no auth asked. Allowed origins: checked on the websocket and /offer when set (a
    # browser always sends Origin; a request without one is a non-browser client and the token guards it).
    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    # ICE: empty by default, so loopback and LAN work offline (aiortc would otherwise use Google's STUN).
    # aiortc uses only the first STUN and the first TURN URL; the credentials apply to turn:/turns: URLs.
    ice_servers: tuple[str, ...] = ()
    ice_username: str | None = None
    ice_credential: str | None = None
    model: str = "auto"  # swap model for swap/both sessions (auto | classic | inswapper-128 | simswap-...)
    # Recording happens only when the server has a folder AND the client's offer asks (`record: true`).
    record_dir: str | None = None
    # A recording ends (its file closed and playable; the session goes on, the websocket says why) at the first
    # of record_max_seconds of video, record_max_bytes of file, less than record_min_free_bytes free on the disk;
    # an offer asking to record when the disk already has less is refused (503).
    record_max_seconds: float = 1800.0
    record_max_bytes: int = 2 * 1024**3
    record_min_free_bytes: int = 1024**3
    # Session liveness: no decoded frame for idle_timeout s closes it (the first within connect_timeout).
    idle_timeout: float = 5.0
    connect_timeout: float = 15.0
    # Half-open offers (issue 17): a session slot (max_sessions) counts only sessions whose peer connection
    # reached "connected". Until then an offer is *pending*, with a budget of its own, checked before any
    # peer connection is built (over it: 503 + Retry-After): at most max_pending_per_client per client address
    # (the request's remote address; behind a reverse proxy every client shares the proxy's) and max_pending in
    # all (None: 2 x max_sessions). A client's own pending offers also count against max_sessions, so one
    # client never negotiates more sessions than the server can hold. A pending session that has not connected
    # within pending_timeout s is closed ("ice-timeout"), freeing its budget; one that connects while every slot
    # is taken is closed ("server full"). 4 per client lets one client open max_sessions (4) at once (the page
    # opens one, the stream bench and `join` tests several from one loopback address).
    max_pending_per_client: int = 4
    max_pending: int | None = None
    pending_timeout: float = 5.0
    close_on_websocket_close: bool = False  # by default the media, not the websocket, keeps a session
    # Frame loop: an input frame not processed within its deadline (at most frame_deadline s; adaptive below) is
    # answered by repeating the last processed frame; at most out_queue frames wait for the sender (older ones
    # are dropped). While the sender waits on one frame's deadline, about frame_deadline x fps newer frames
    # arrive: out_queue must hold them (0.25 s at 30 fps is 7.5; 10 leaves a margin), or frames are dropped
    # that were in time.
    frame_deadline: float = 0.25
    # Adaptive deadline (issue 17, stream/tracks.py AdaptiveDeadline): each session's deadline follows its own
    # processing latency (arrival -> result: 1.5 x its p90 over the last 50 frames + 10 ms), between
    # frame_deadline_min and frame_deadline (the maximum, used until 10 frames are measured): a fast worker's
    # late frames go out as stand-ins sooner, an overloaded one's are shed sooner. A floor above frame_deadline
    # is frame_deadline. adaptive_deadline False: frame_deadline always.
    frame_deadline_min: float = 0.05
    adaptive_deadline: bool = True
    out_queue: int = 10
    # Worker: collect jobs for up to batch_window s (or until every live session has one in) and run the
    # swapper on all their faces at once, at most max_batch_faces per generate call.
    batch_window: float = 0.004
    max_batch_faces: int = 16
    # Swap frames on the device path (engines/swap/device_path.py: one upload and download per frame, warps, swap,
    # paste, badge and watermark on the device, every session's frames in one call): on | off | auto (on when
    # the swapper runs on CUDA; on a CPU the CPU path is faster, BENCHMARKS.md).
    device_path: str = "auto"
    # Websocket cadence and limits.
    metrics_interval: float = 1.0
    heartbeat_interval: float = 2.0
    max_message_bytes: int = 16 * 1024
    max_offer_bytes: int = 256 * 1024
    # Offline detection (POST /detect): the upload goes to a temporary file (in detect_tmp_dir, default the
    # system's) that is deleted when the answer is sent; at most max_detect_jobs analyses at once (more get
    # 503); detect_max_frames caps the frames analysed per upload (None: the whole video).
    max_detect_bytes: int = 200 * 1024 * 1024
    max_detect_jobs: int = 1
    detect_max_frames: int | None = None
    detect_tmp_dir: str | None = None

    def __post_init__(self) -> None:
        if self.max_detect_bytes < 1 or self.max_detect_jobs < 1 or (
                self.detect_max_frames is not None and self.detect_max_frames < 1):
            raise ValueError("max_detect_bytes, max_detect_jobs and detect_max_frames must be at least 1")
        if self.max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        if self.max_sources < 1 or self.max_sources_per_client < 1:
            raise ValueError("max_sources and max_sources_per_client must be at least 1")
        if self.max_pending_per_client < 1 or (self.max_pending is not None and self.max_pending < 1):
            raise ValueError("max_pending_per_client and max_pending must be at least 1")
        for name in ("idle_timeout", "connect_timeout", "pending_timeout", "frame_deadline", "metrics_interval",
                     "heartbeat_interval", "upload_read_timeout", "header_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.out_queue < 1 or self.max_batch_faces < 1 or self.batch_window < 0:
            raise ValueError("out_queue and max_batch_faces must be >= 1, batch_window >= 0")
        if not self.frame_deadline_min > 0:
            raise ValueError("frame_deadline_min must be positive")
        if not isinstance(self.adaptive_deadline, bool):
            raise ValueError(f"adaptive_deadline must be true or false, got {self.adaptive_deadline!r}")
        if self.device_path not in ("auto", "on", "off"):
            raise ValueError(f"device_path must be auto, on or off, got {self.device_path!r}")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty (leave it unset for no auth)")

    @property
    def pending_limit(self) -> int:
        """Offers negotiating at once, all clients together (max_pending, or 2 x max_sessions)."""
        return self.max_pending if self.max_pending is not None else 2 * self.max_sessions


@dataclass(frozen=True)
class DeepfakeConfig:
    """The sliding-window deepfake detector in live monitoring (serve's monitor/both sessions, `monitor`)."""

    model: str | None = "default"  # "default": the committed model; a folder; None: no model alerts
    backend: str = "auto"
    device: str = "auto"
    # The scorer runs on every feature_stride-th frame of a face track and the temporal head after every
    # score_stride-th new feature: at 30 fps, 2 and 5 give a window of 40 frames (1.3 s) and a score every
    # 0.33 s, for a fraction of the per-frame cost (BENCHMARKS.md, "Deepfake detector, live cost").
    feature_stride: int = 2
    score_stride: int = 5

    def __post_init__(self) -> None:
        if self.feature_stride < 1 or self.score_stride < 1:
            raise ValueError("feature_stride and score_stride must be at least 1")


@dataclass(frozen=True)
class ClusterConfig:
    """Sessions placed on a Ray cluster (`serve --ray`, stream/cluster.py; DESIGN.md "Beyond one machine").

    ``address``: None keeps the single-host server; "local" starts a Ray cluster inside the process (one node
    offering ``local_hosts`` hosts); anything else is passed to ``ray.init`` (``auto``, ``HOST:PORT``,
    ``ray://HOST:10001``). A session host is a Ray actor that claims ``sessions_per_host`` units of the custom
    resource ``resource`` (its session capacity: the scheduler and the autoscaler see it) and one GPU where its
    node has one; nodes offer the resource with ``ray start --resources '{"swapwatch_sessions": 4}'``. The
    front end looks for nodes with free units and for hosts that died every ``reconcile_interval`` s, and relays
    a session's websocket messages by polling its host (each poll waits up to ``poll_timeout`` s)."""

    address: str | None = None
    sessions_per_host: int = 4
    local_hosts: int = 1
    resource: str = "swapwatch_sessions"
    namespace: str = "swapwatch"
    reconcile_interval: float = 2.0
    poll_timeout: float = 1.0
    host_start_timeout: float = 120.0  # loading a host's models (TensorRT engines can take minutes the first time)
    call_timeout: float = 30.0  # any other call to a host (an offer's negotiation included)

    def __post_init__(self) -> None:
        if self.sessions_per_host < 1 or self.local_hosts < 1:
            raise ValueError("sessions_per_host and local_hosts must be at least 1")
        for name in ("reconcile_interval", "poll_timeout", "host_start_timeout", "call_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.address is not None and not self.address.strip():
            raise ValueError("the Ray address must not be empty (use 'local' for a cluster in this process)")


@dataclass(frozen=True)
class Config:
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    deepfake: DeepfakeConfig = field(default_factory=DeepfakeConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
