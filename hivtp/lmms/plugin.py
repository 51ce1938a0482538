"""Registration of ``hivtp_llava`` with lmms-eval 0.7.3 (entry-point group ``lmms_eval.models``).

pyproject.toml::

    [project.entry-points."lmms_eval.models"]
    hivtp_llava = "hivtp.lmms.plugin:manifest"

lmms-eval loads the entry point and accepts a ``ModelManifest``, an iterable of them, or a callable
returning either (``ModelRegistryV2.load_entrypoint_manifests``); we give a callable so that loading
the entry point does not import lmms-eval's model zoo. The class path is resolved lazily.
"""

from __future__ import annotations

MODEL_NAME = "hivtp_llava"
CHAT_CLASS_PATH = "hivtp.lmms.model.HivtpLlava"


def manifest():
    """The ``ModelManifest`` lmms-eval registers for ``--model hivtp_llava``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, chat_class_path=CHAT_CLASS_PATH)
