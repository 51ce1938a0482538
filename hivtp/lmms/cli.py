"""``python -m hivtp.lmms.cli <lmms-eval arguments>``: lmms-eval's CLI with ``hivtp_llava`` registered.

Identical to ``python -m lmms_eval`` once the package's entry point is installed; this also works from a
source checkout without it (it registers the same manifest the entry point names) and it works under
``accelerate launch -m hivtp.lmms.cli``.
"""

from __future__ import annotations


def register() -> None:
    """Register ``hivtp_llava`` in lmms-eval's model registry (idempotent)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    from .plugin import manifest
    from .qwen2_5_vl import manifest as qwen_manifest

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    MODEL_REGISTRY_V2.register_manifest(qwen_manifest(), overwrite=True)  # hivtp_qwen2_5_vl


def main() -> None:
    register()
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
