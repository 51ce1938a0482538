"""``python -m hivtp.lmms.cli <lmms-eval arguments>``: lmms-eval's CLI with ``hivtp_llava`` registered.

The same run as ``python -m lmms_eval`` once the package's entry point is installed; this also works
from a source checkout without it (it registers the same manifest the entry point names) and under
``accelerate launch -m hivtp.lmms.cli``. Unlike lmms-eval's CLI, which logs an evaluation error and
exits 0, it exits 1 on any error, and names the error's cause in its last line (lmms-eval wraps a
missing dataset in tenacity's ``RetryError[<Future ...>]``, which says nothing).
"""

from __future__ import annotations

import sys
import traceback

#: the last line of a failed run starts with this (the subprocess runner quotes what follows it)
FAILURE_PREFIX = "hivtp.lmms.cli: evaluation failed: "


def register() -> None:
    """Register ``hivtp_llava`` in lmms-eval's model registry (idempotent)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    from .plugin import manifest
    from .qwen2_5_vl import manifest as qwen_manifest

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
    MODEL_REGISTRY_V2.register_manifest(qwen_manifest(), overwrite=True)  # hivtp_qwen2_5_vl


def root_cause(exc: BaseException) -> BaseException:
    """``exc`` with retry wrappers removed: tenacity's RetryError holds the real error in its last attempt."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        attempt = getattr(exc, "last_attempt", None)  # tenacity.RetryError
        inner = attempt.exception() if attempt is not None and hasattr(attempt, "exception") else None
        if inner is None:
            break
        exc = inner
    return exc


def describe(exc: BaseException) -> str:
    """One line: the error's type and message, and what to do when we know it."""
    cause = root_cause(exc)
    text = f"{type(cause).__name__}: {cause}"
    if isinstance(cause, FileNotFoundError):
        text += (" -- a task's dataset or file is missing. The offline tasks (eval/tasks) read "
                 "artifacts/data relative to the working directory: build it with `make data` and run "
                 "from the repository root (or use hivtp.lmms.runner, which renders absolute paths).")
    return text


def main() -> int:
    """Run lmms-eval's CLI on ``sys.argv``; 0 when every evaluation succeeded, 1 otherwise."""
    register()
    import lmms_eval.__main__ as lmms_main

    failures: list[BaseException] = []
    evaluate_one = lmms_main.cli_evaluate_single

    def recording(args):
        # lmms-eval's cli_evaluate catches this, prints the traceback and goes on: we only take note
        try:
            return evaluate_one(args)
        except Exception as exc:
            failures.append(exc)
            raise

    lmms_main.cli_evaluate_single = recording
    try:
        lmms_main.cli_evaluate()
    except Exception as exc:  # raised outside the per-config loop (bad arguments, --verbosity DEBUG)
        traceback.print_exc()
        failures.append(exc)
    finally:
        lmms_main.cli_evaluate_single = evaluate_one
    if failures:
        sys.stdout.flush()
        print(FAILURE_PREFIX + describe(failures[0]), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
