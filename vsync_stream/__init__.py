"""vsync-stream: keeps a Pix participant's DICT keys provably in sync with BACEN (CID and VSync)."""

__version__ = "0.1.0"
