"""coco_captions through the data catalog adapter, on TFDS mock data (its stock builder needs TF)."""
import numpy as np
import tensorflow_datasets as tfds

from mmfm.data.catalog import coco_captions_builder, open_catalog


def test_coco_captions_adapter_keeps_every_caption_of_the_karpathy_test_split(tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        src, _ = open_catalog("coco_captions", str(tmp_path), "test")
        raw = coco_captions_builder(str(tmp_path)).as_data_source(split="test")
        assert len(src) == len(raw) == 5
        for i in range(len(src)):
            r = src[i]
            expected = [t.decode() if isinstance(t, bytes) else str(t)
                        for t in np.asarray(raw[i]["captions"]["text"]).reshape(-1)]
            assert r["captions"] == expected and r["caption"] == expected[0]
            assert r["image"].ndim == 3 and r["image"].shape[-1] == 3
