"""``python -m hivtp.latency``: measure, then write ``latency.csv`` and ``summary.md`` into ``--out``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_text
from ..errors import ConfigError, HivtpError
from ..params import unset_if_none
from .inputs import DEFAULT_PROMPT_TOKENS, DTYPES
from .measure import measure
from .report import summarize, write_csv
from .timing import check_device


def _value(method: str, key: str, text: str) -> Any:
    """A number, true / false, None for the word none where it means "not set" (:mod:`hivtp.params`:
    ``newline=none`` stays the LLaVA-NeXT policy), else the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), unset_if_none(method, key, text))


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value,key=value`` (e.g. ``hivtp:budget=128,backend=eager``)."""
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"cannot read method parameter {item!r} in {spec!r}; write name:key=value,key=value.")
        params[key.strip()] = _value(name, key.strip(), value.strip())
    if not name:
        raise ConfigError(f"method spec {spec!r} has no method name.")
    return name, params


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hivtp.latency", description=__doc__)
    p.add_argument("--model", default="tiny-llava", help="shape name | local dir | hub id")
    p.add_argument("--random-weights", action="store_true", help="build a shipped shape with random weights")
    p.add_argument("--methods", nargs="+", default=["none", "hivtp"], help="name or name:key=value,...")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS)
    p.add_argument("--image-size", type=int, nargs=2, default=[672, 672], metavar=("H", "W"),
                   help="LLaVA-NeXT image size (default 672 672: 5 crops)")
    p.add_argument("--faithful", action="store_true", help="also time hivtp on the release's eager path")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, required=True, help="folder for latency.csv and summary.md")
    p.add_argument("--quiet", action="store_true")
    return p


def _output_folder(out: Path) -> None:
    """Create ``--out`` before any timing, so that an unusable folder fails in a second, not after."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the --out folder {out} ({err.strerror or err}); pass a folder you can write to.") from err
    if not os.access(out, os.W_OK):
        raise ConfigError(f"the --out folder {out} is not writable; pass a folder you can write to.")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_device(args.device)  # a bad device fails before the folder is made
        _output_folder(args.out)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        rows = measure(
            model=args.model, methods=[parse_method(m) for m in args.methods], random_weights=args.random_weights,
            batch=args.batch, dtype=args.dtype, attn=args.attn, device=args.device, warmup=args.warmup,
            repeats=args.repeats, new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens,
            faithful=args.faithful, progress=not args.quiet, image_size=tuple(args.image_size),
        )
    except HivtpError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    csv_path = write_csv(rows, args.out / "latency.csv")
    text = summarize(rows)
    write_text(args.out / "summary.md", text)
    print(text)
    print(f"wrote {csv_path} and {args.out / 'summary.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
