"""Training rankers: learning-to-rank losses (PG-Rank's policy gradient among them), a resumable
trainer, cross-encoders and bi-encoders over candidate lists with mined hard negatives, the FIRST
objective for listwise LLMs, and an MLP over LETOR features.

    from rerank.train import TrainConfig, train_cross_encoder, get_loss
    train_cross_encoder("sentence-transformers/all-MiniLM-L6-v2", load_dataset("scifact", split="train"),
                        "models/minilm-ce", TrainConfig(loss="lambdaloss", epochs=2, lr=7e-5))

Importing this package imports torch.
"""

from .biencoder import BiEncoderTask, load_bi_encoder, train_bi_encoder
from .crossencoder import CrossEncoderTask, load_cross_encoder_body, train_cross_encoder
from .features import FeatureMLP, FeatureRanker, LetorData, letor_ndcg, read_letor, train_feature_ranker
from .first import FirstTask, Window, label_windows, train_first
from .losses import LOSSES, get_loss
from .pgrank import PGRankLoss, pgrank
from .trainer import TrainConfig, Trainer

LOSSES["pgrank"] = pgrank  # policy gradient on sampled rankings (rerank.train.pgrank)

__all__ = ["LOSSES", "BiEncoderTask", "CrossEncoderTask", "FeatureMLP", "FeatureRanker", "FirstTask", "LetorData",
           "PGRankLoss", "TrainConfig", "Trainer", "Window", "get_loss", "label_windows", "letor_ndcg", "load_bi_encoder",
           "load_cross_encoder_body", "read_letor", "train_bi_encoder", "train_cross_encoder", "train_feature_ranker",
           "train_first"]
