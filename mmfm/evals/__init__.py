"""Evaluation metrics on precomputed embeddings (model-independent).

retrieval: recall@K in both directions (several captions per image), blocked and shardable.
zeroshot: prompt-ensembled class embeddings and top-k zero-shot accuracy.
linear_probe: multinomial logistic regression (L-BFGS in JAX), full and few-shot probes.

Built on these (import the modules directly; they load TFDS/flax models):
  evaluators: `config.evals.evaluators` -> Evaluator objects (zeroshot, retrieval, linear_probe,
    few_shot, mae_pictures, classify: a fine-tuned head's accuracy) run during training (runner.TrainingEvaluator) and by `mmfm eval`
    (standalone).
  encoders.MeshEncoder: jitted encoders on the training mesh (sharded params, sharded eval batch).
  model_io.EvalModel: params + preprocessing + tokenizer from a checkpoint or a trainer
    (zoo models: `mmfm.load_eval_model`).
  datasets: named eval datasets (cifar10/100, imagenet2012, coco_captions, captioned_shapes) and
    the shipped class names / prompt templates (mmfm/evals/data/*.json).
  pictures: PIL grids of top retrievals and MAE reconstructions.
  suites: `mmfm eval --suite` (shapes, clip_benchmark, datacomp) over the task registry (tasks,
    task_data), with shapes_suite (per-group results, compositional hard negatives from
    compositional, the dense probe of dense_probe), group_metrics (mean per-class recall,
    worst-group accuracy) and suite_report (markdown, JSON, open_clip-style CSV).
Fine-tuning is training: a classification term in the one Trainer (`loss.classify_weight`,
`model.num_classes`; experiments/configs/finetune_shapes.py).
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
