"""swapwatch: real-time face swap and deepfake monitoring for live video streams."""

__version__ = "0.1.0"
