"""lmms-eval in this process: the model and the tasks are loaded once, many configurations evaluated.

:func:`evaluate` takes the very command line the subprocess runner would start
(``--model hivtp_llava --model_args ... --tasks ... --output_path ... --log_samples ...``), parses it
with lmms-eval's own parser (so every default, e.g. ``--seed`` and ``--reasoning_tags``, is the CLI's)
and does what lmms-eval's ``cli_evaluate_single`` does -- ``evaluator.simple_evaluate`` and the
``EvaluationTracker``'s results and samples files -- with two differences:

- the plugin instance (``hivtp_llava`` or ``hivtp_qwen2_5_vl``) is cached per loading arguments (pretrained, device, dtype, ...; one
  model at a time): a new configuration re-attaches its method (:meth:`HivtpLlava.configure`; the HF
  model is never modified) and points the accounting to its folder;
- each task (dataset included) is loaded once per include path (:class:`TaskCache`); lmms-eval
  rebuilds a task's requests on every evaluation, so a task object serves any limit.

Metrics are lmms-eval's task code either way; the files land where the CLI puts them. Used by
:func:`hivtp.lmms.runner.run_accuracy` (default); ``accelerate launch`` still needs the subprocess.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError

__all__ = ["CACHE_VARIABLES", "cache_bytes", "cache_counts", "cached_model", "clear_caches", "cli_args", "evaluate",
           "task_manager"]

#: the plugin models this runner serves, by lmms-eval model name (module, class)
PLUGINS = {"hivtp_llava": ("hivtp.lmms.model", "HivtpLlava"),
           "hivtp_qwen2_5_vl": ("hivtp.lmms.qwen2_5_vl", "HivtpQwen2_5_VL")}
_model: tuple[str, Any] | None = None  # (loading key, plugin instance): one model held at a time
_managers: dict[tuple[str, str, str], Any] = {}  # (include path, verbosity, model) -> TaskCache
_stderr_handler_set = False


def cli_args(argv: list[str]):
    """lmms-eval's CLI namespace for ``argv``, from lmms-eval's own parser."""
    from lmms_eval.__main__ import parse_eval_args

    saved = sys.argv
    sys.argv = [saved[0] if saved else "lmms_eval"]  # parse_eval_args also parses sys.argv: give it nothing
    try:
        parser, _ = parse_eval_args()
    finally:
        sys.argv = saved
    return parser.parse_args(argv)


def clear_caches() -> None:
    """Forget the cached model and tasks (the next evaluation loads them again)."""
    global _model
    _model = None
    _managers.clear()


#: The environment variables (GiB) that override the shared caches' byte budgets (the defaults are
#: ``TowerCache.DEFAULT_MAX_BYTES`` and ``InputCache.DEFAULT_MAX_BYTES``). A sweep answers every
#: configuration's batches in the same order, so a cache smaller than one configuration's batches is
#: read cyclically and LRU then hits nothing: size it to hold them all (``scripts/reproduce.py --full``
#: sets both to 6 GiB for 4,000 offline images: about 1.35 MB of pixels and 1.3 MB of toy tower
#: captures per image).
CACHE_VARIABLES = {"tower": "HIVTP_TOWER_CACHE_GB", "inputs": "HIVTP_INPUT_CACHE_GB"}


def cache_bytes(name: str, default: int) -> int:
    """The byte budget of the ``name`` cache ("tower" / "inputs"): its variable in GiB, else ``default``."""
    variable = CACHE_VARIABLES[name]
    text = os.environ.get(variable, "")
    if not text.strip():
        return default
    try:
        gib = float(text)
    except ValueError:
        gib = float("nan")
    if not (math.isfinite(gib) and gib >= 0):
        raise ConfigError(f"{variable}={text!r} is not a budget in GiB; set it like {variable}=6 (0 keeps one "
                          "batch) or unset it.")
    return int(gib * 2**30)


def cache_counts() -> dict[str, tuple[int, int]]:
    """(hits, misses) of the held model's shared caches so far ("tower", "inputs"); {} before a model loads."""
    if _model is None:
        return {}
    lm = _model[1]
    caches = {"tower": getattr(lm, "tower_cache", None), "inputs": getattr(lm, "input_cache", None)}
    return {name: (c.hits, c.misses) for name, c in caches.items() if c is not None}


def plugin_class(name: str):
    """The plugin model class lmms-eval's ``--model name`` resolves to (:data:`PLUGINS`)."""
    import importlib

    if name not in PLUGINS:
        raise ConfigError(f"the in-process runner serves --model {' / '.join(PLUGINS)}, got {name!r}; "
                          "use the subprocess runner (inprocess=False) for other models.")
    module, cls = PLUGINS[name]
    return getattr(importlib.import_module(module), cls)


def cached_model(args) -> Any:
    """The plugin instance (``hivtp_llava`` / ``hivtp_qwen2_5_vl``) for these CLI arguments, configured
    for their method, parameters, accounting folder and batch size; loaded only when the model or its
    loading arguments differ from the last."""
    global _model
    from lmms_eval.utils import simple_parse_args_string

    from ..vision import TowerCache
    from .model import InputCache

    cls = plugin_class(args.model)
    loader, plugin, params = cls.split_args(simple_parse_args_string(args.model_args))
    # read before a (possibly long) model load, so that a bad budget fails first
    budgets = {"tower": cache_bytes("tower", TowerCache.DEFAULT_MAX_BYTES),
               "inputs": cache_bytes("inputs", InputCache.DEFAULT_MAX_BYTES)}
    key = json.dumps({**loader, "model": args.model, "device": args.device, "max_batch_size": args.max_batch_size},
                     sort_keys=True, default=str)
    if _model is None or _model[0] != key:
        _model = None  # free the previous model before loading the next
        # exactly what lmms-eval's simple_evaluate does with a model name
        lm = cls.create_from_arg_string(
            args.model_args, {"batch_size": args.batch_size, "max_batch_size": args.max_batch_size, "device": args.device})
        # configurations of one model answer the same batches: share their vision-tower passes
        # (tested to change no answer: tests/test_engine_tower_cache.py)
        lm.tower_cache = TowerCache(budgets["tower"])
        if hasattr(lm, "input_cache"):  # and their documents' processor outputs (hivtp_llava)
            lm.input_cache = InputCache(budgets["inputs"])
        lm.configure(plugin, params)
        _model = (key, lm)
    else:
        lm = _model[1]
        lm.configure(plugin, params)
    lm.batch_size_per_gpu = int(args.batch_size)
    return lm


def task_manager(include_path: str | None, verbosity: str, model: str = "hivtp_llava"):
    """A :class:`TaskCache` per include path and model (indexing lmms-eval's task YAMLs takes seconds)."""
    key = (str(include_path), verbosity, model)
    if key not in _managers:
        _managers[key] = _task_cache_class()(verbosity, include_path=include_path, model_name=model)
    return _managers[key]


def _task_cache_class():
    from lmms_eval.tasks import TaskManager

    class TaskCache(TaskManager):
        """lmms-eval's TaskManager that loads each task or group (its dataset included) once."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._loaded: dict[tuple[str, str], dict] = {}

        def load_task_or_group(self, task_list=None, task_type="simple") -> dict:
            names = [task_list] if isinstance(task_list, str) else list(task_list or [])
            for name in names:
                if (name, task_type) not in self._loaded:
                    self._loaded[(name, task_type)] = super().load_task_or_group([name], task_type)
            # combined exactly as TaskManager.load_task_or_group combines them (the order tasks run in)
            return dict(collections.ChainMap(*(self._loaded[(n, task_type)] for n in names)))

    return TaskCache


@contextmanager
def _environment(data_dir: Path | None) -> Iterator[None]:
    """HIVTP_DATA_DIR for the offline GQA images (the subprocess gets it in its environment)."""
    saved = os.environ.get("HIVTP_DATA_DIR")
    if data_dir is not None:
        os.environ["HIVTP_DATA_DIR"] = str(Path(data_dir).resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HIVTP_DATA_DIR", None)
        else:
            os.environ["HIVTP_DATA_DIR"] = saved


@contextmanager
def _log_to(path: Path, verbosity: str) -> Iterator[None]:
    """lmms-eval's log of this evaluation to ``path`` (the subprocess runner keeps the same file);
    on stderr only warnings and errors, once for the whole process (lmms-eval's CLI also replaces
    loguru's default handler)."""
    global _stderr_handler_set
    from loguru import logger

    if not _stderr_handler_set:
        try:
            logger.remove(0)  # loguru's default DEBUG handler: task indexing alone logs hundreds of lines
        except ValueError:
            pass  # already replaced (e.g. by lmms-eval's CLI)
        logger.add(sys.stderr, level="WARNING")
        _stderr_handler_set = True
    handler = logger.add(str(path), level=verbosity, colorize=False)
    try:
        yield
    finally:
        logger.remove(handler)


def evaluate(argv: list[str], data_dir: Path | None, log_path: Path, task_index: Path | None = None) -> dict[str, Any]:
    """Evaluate lmms-eval command line ``argv`` (without ``python -m ...``) in this process; returns
    the results dict. Writes what ``python -m lmms_eval argv`` writes (results, logged samples) and
    the plugin's accounting; raises whatever the evaluation raised. ``task_index``: the folder
    tasks are indexed and loaded from instead of ``--include_path`` (which the results still name),
    for YAMLs identical to it that stay in place for the whole process."""
    from lmms_eval import evaluator, utils
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.utils import simple_parse_args_string

    args = cli_args(argv)
    plugin_class(args.model)  # a clear error for a model this runner does not serve
    with _environment(data_dir), _log_to(log_path, args.verbosity):
        manager = task_manager(str(task_index) if task_index else args.include_path, args.verbosity, args.model)
        task_list = args.tasks.split(",")
        task_names = manager.match_tasks(task_list)
        missing = [t for t in task_list if t not in task_names]
        if missing:
            raise ConfigError(f"lmms-eval knows no task(s) {missing} (include path {args.include_path}).")
        lm = cached_model(args)
        if args.output_path:
            args.hf_hub_log_args += f",output_path={args.output_path}"
        tracker = EvaluationTracker(**simple_parse_args_string(args.hf_hub_log_args))
        datetime_str = utils.get_datetime_str(timezone=args.timezone)
        # the arguments lmms-eval's cli_evaluate_single passes, with the model object for its name
        results = evaluator.simple_evaluate(
            model=lm, model_args=args.model_args, tasks=task_names, num_fewshot=args.num_fewshot,
            batch_size=args.batch_size, max_batch_size=args.max_batch_size, device=args.device,
            use_cache=args.use_cache, limit=args.limit, offset=args.offset, check_integrity=args.check_integrity,
            write_out=args.write_out, log_samples=args.log_samples, evaluation_tracker=tracker,
            system_instruction=args.system_instruction, apply_chat_template=args.apply_chat_template,
            fewshot_as_multiturn=args.fewshot_as_multiturn, gen_kwargs=args.gen_kwargs, task_manager=manager,
            verbosity=args.verbosity, predict_only=args.predict_only, random_seed=args.seed[0],
            numpy_random_seed=args.seed[1], torch_random_seed=args.seed[2], fewshot_random_seed=args.seed[3],
            cli_args=args, datetime_str=datetime_str, distributed_executor_backend="accelerate",
            force_simple=args.force_simple, launcher_args=args.launcher_args, repeats=args.repeats,
            baseline=args.baseline, max_tokens=args.max_tokens,
            process_docs_parallel=getattr(args, "process_docs_parallel", 4),
            **evaluator.request_caching_arg_to_dict(cache_requests=args.cache_requests),
        )
        # as the CLI records them (given a model object, lmms-eval names it by its checkpoint path)
        results["config"]["model"] = args.model
        tracker.general_config_tracker.model_source = args.model
        samples = results.pop("samples") if args.log_samples else None
        tracker.save_results_aggregated(results=results, samples=samples, datetime_str=datetime_str)
        if args.log_samples:
            for task_name in results["configs"]:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    return results
