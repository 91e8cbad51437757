"""Evaluator config for the catalog tests: `mmfm eval --config tests/evals/catalog_eval_config.py`."""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.data = dict(dir="")  # "" = TFDS's default data dir (mock_data in the tests)
    c.evals = dict(batch_size=256, evaluators=dict(
        c10_zeroshot=dict(type="zeroshot", dataset="cifar10", topk=(1, 5)),
        c10_probe=dict(type="linear_probe", dataset="cifar10", l2_grid=(1e-3, 1e-1)),
        c10_fewshot=dict(type="few_shot", dataset="cifar10", shots=(1, 2), seeds=(0, 1)),
        in1k_zeroshot=dict(type="zeroshot", dataset="imagenet2012", split="validation",
                           topk=(1, 5)),
        coco=dict(type="retrieval", dataset="coco_captions", split="test", pictures=2),
    ))
    return c
