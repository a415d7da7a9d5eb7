"""Finding faces: what a face is, the detectors, and following faces through a video.

- ``face``: :class:`Face` (box, score, 5 landmarks) and the :class:`FaceDetector` interface.
- ``yunet``, ``mtcnn``, ``scrfd``: the detectors; ``detectors.create_detector`` builds one by name with its
  registry weights; ``nms``, ``letterbox``: their shared pre- and post-processing.
- ``align``: 5-point templates and similarity warps (crop and paste back); ``tracking``: tracks between
  detections with optical flow and landmark smoothing; ``draw``: boxes and landmarks on images and videos.

Uses only ``runtime``; knows nothing of swapping or deepfakes.
"""

from swapwatch.engines import lazy_exports

# Public name -> the module that defines it; imported on first use (importing a room costs nothing).
__getattr__, __dir__ = lazy_exports(__name__, {
    "ARCFACE_112": "align", "AlignedFace": "align", "CropTemplate": "align", "FFHQ_512": "align",
    "INSWAPPER_128": "align", "SIMSWAP_224": "align", "TEMPLATES": "align", "affine_grid_for": "align",
    "align_face": "align", "arcface_template": "align", "estimate_alignment": "align", "ffhq_template": "align",
    "inverse_matrix": "align", "template_errors": "align", "transform_points": "align",
    "umeyama_similarity": "align", "warp_back": "align", "warp_back_batch_torch": "align",
    "warp_batch_torch": "align", "warp_face": "align",
    "create_detector": "detectors",
    "VideoWriter": "draw", "draw_faces": "draw",
    "Face": "face", "FaceDetector": "face",
    "Letterbox": "letterbox",
    "MTCNNConfig": "mtcnn", "MTCNNDetector": "mtcnn", "pyramid_scales": "mtcnn",
    "box_iou": "nms",
    "SCRFDDetector": "scrfd", "SCRFDLayout": "scrfd",
    "FACE_SMOOTHING": "tracking", "FaceTracker": "tracking", "KeyframeTracker": "tracking",
    "OneEuroConfig": "tracking", "OneEuroFilter": "tracking",
    "YuNetDetector": "yunet",
})
