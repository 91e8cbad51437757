"""Evaluation metrics on precomputed embeddings (model-independent).

retrieval: recall@K in both directions (several captions per image), blocked and shardable.
zeroshot: prompt-ensembled class embeddings and top-k zero-shot accuracy.
linear_probe: multinomial logistic regression (L-BFGS in JAX), full and few-shot probes.
"""
from mmfm.evals.linear_probe import (few_shot_probe, fit_logreg, linear_probe, predict_logreg,
                                     sample_few_shot, standardize)
from mmfm.evals.retrieval import retrieval_metrics, retrieval_ranks
from mmfm.evals.zeroshot import (class_embeddings, zeroshot_accuracy, zeroshot_logits,
                                 zeroshot_predict)

__all__ = [
    "class_embeddings", "few_shot_probe", "fit_logreg", "linear_probe", "predict_logreg",
    "retrieval_metrics", "retrieval_ranks", "sample_few_shot", "standardize", "zeroshot_accuracy",
    "zeroshot_logits", "zeroshot_predict",
]
