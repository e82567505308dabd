"""Training rankers: learning-to-rank losses, a resumable trainer, cross-encoders over candidate
lists with mined hard negatives, and an MLP over LETOR features.

    from rerank.train import TrainConfig, train_cross_encoder, get_loss
    train_cross_encoder("sentence-transformers/all-MiniLM-L6-v2", load_dataset("scifact", split="train"),
                        "models/minilm-ce", TrainConfig(loss="lambdaloss", epochs=2, lr=7e-5))

Importing this package imports torch.
"""

from .crossencoder import CrossEncoderTask, load_cross_encoder_body, train_cross_encoder
from .features import FeatureMLP, FeatureRanker, LetorData, letor_ndcg, read_letor, train_feature_ranker
from .losses import LOSSES, get_loss
from .trainer import TrainConfig, Trainer

__all__ = ["LOSSES", "CrossEncoderTask", "FeatureMLP", "FeatureRanker", "LetorData", "TrainConfig", "Trainer", "get_loss",
           "letor_ndcg", "load_cross_encoder_body", "read_letor", "train_cross_encoder", "train_feature_ranker"]
