"""Helpers shared by the benchmark scripts: offline model folders, machine facts, writing results."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from rerank.env import atomic_write
from rerank.models import model_folders

RESULTS = Path(__file__).parent / "results"


def offline(name: str) -> str:
    """The folder of an installed offline model (../shared/tools/offline-models)."""
    for folder in model_folders():
        if (folder / name / "config.json").is_file():
            return str(folder / name)
    raise SystemExit(f"{name} not installed: ../shared/tools/offline-models {name}")


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform()}


def write_result(result: dict[str, Any], out: str | Path) -> None:
    with atomic_write(out) as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
