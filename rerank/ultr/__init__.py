"""Unbiased learning to rank from click logs.

    from rerank.ultr import aggregate, iter_sessions, load_click_model, simulate
    stats = aggregate(iter_sessions("clicks.jsonl.gz"))        # streamed, folded per shown list
    train_from_clicks(stats, FeatureScorer(letor, stats.groups), "models/dla", TrainConfig(loss="softmax"))

Importing :mod:`rerank.ultr.learn` imports torch; the log and simulation modules need numpy only.
"""

from .log import ClickGroup, ClickSession, ClickStats, aggregate, iter_sessions, read_click_log, read_yandex, write_click_log
from .simulate import ClickModel, ShownList, load_click_model, simulate

__all__ = ["ClickGroup", "ClickModel", "ClickSession", "ClickStats", "ShownList", "aggregate", "iter_sessions",
           "load_click_model", "read_click_log", "read_yandex", "simulate", "write_click_log"]
