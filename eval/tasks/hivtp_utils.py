"""Per-task functions for the offline mini-benchmarks: lmms-eval's own, re-exported.

Only what must differ offline is written here: GQA's images live in a second local dataset
(``artifacts/data/gqa_images``) instead of the hub, so ``doc_to_visual`` looks them up by imageId.
Prompts, result processing and aggregation are lmms-eval's code, so the metrics are too.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from lmms_eval.tasks.gqa.utils import gqa_doc_to_text  # noqa: F401
from lmms_eval.tasks.mme.utils import mme_aggregate_results, mme_doc_to_text, mme_doc_to_visual, mme_process_results  # noqa: F401
from lmms_eval.tasks.pope.utils import (  # noqa: F401
    pope_aggregate_accuracy,
    pope_aggregate_f1_score,
    pope_aggregate_precision,
    pope_aggregate_recall,
    pope_aggregate_yes_ratio,
    pope_doc_to_text,
    pope_doc_to_visual,
    pope_process_results,
)
from lmms_eval.tasks.scienceqa.utils import sqa_doc_to_target, sqa_doc_to_text, sqa_doc_to_visual, sqa_process_results  # noqa: F401

#: where `make data` writes (relative paths resolve against the working directory, as the YAMLs' do)
DATA_DIR_ENV = "HIVTP_DATA_DIR"


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, "artifacts/data"))


@lru_cache(maxsize=4)
def _gqa_images(path: str):
    """imageId -> row index of the local GQA image dataset (images decoded lazily, per doc)."""
    from datasets import load_from_disk

    if not Path(path).is_dir():
        raise FileNotFoundError(f"GQA images not found at {path}; build the offline data with `make data`.")
    images = load_from_disk(path)["testdev"]
    return images, {image_id: i for i, image_id in enumerate(images["id"])}


def gqa_doc_to_visual(doc):
    images, index = _gqa_images(str(data_dir() / "gqa_images"))
    if doc["imageId"] not in index:
        raise KeyError(f"GQA imageId {doc['imageId']!r} is not in {data_dir() / 'gqa_images'}; rebuild with `make data`.")
    return [images[index[doc["imageId"]]]["image"].convert("RGB")]
