"""Model loading (HF id, local path, offline folders) and the batched scoring engine."""

from .engine import Cost, Engine, ScoreCache
from .loading import model_folders, pick_device, pick_dtype, resolve_model

__all__ = ["Cost", "Engine", "ScoreCache", "model_folders", "pick_device", "pick_dtype", "resolve_model"]
