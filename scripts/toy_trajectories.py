"""Offline method rows over several toys: which differences between methods survive retraining?

    python scripts/toy_trajectories.py [--models toy-llava toy-llava-xeon-seed1 ...] [--budget 64]
        [--per-family 300] [--threads 2] [--out results/toy_trajectories.json]
    python scripts/toy_trajectories.py --from-record results/toy_trajectories.json   # the report again, no model

``make toy-trajectories`` runs the first form on the shipped toy and its shipped siblings
(``hivtp.zoo.TOY_TRAJECTORIES``). Each toy answers the same held-out questions with the configurations
of ``scripts/toy_world_change.py`` (the calibration's, then every offline method at ``--budget`` with the
offline tables' parameters); the statistics (per toy, pigeonhole over toys, pairwise on every toy) are
:mod:`hivtp.toy.trajectories`'. Each toy's answers are kept under ``--cache`` as soon as they are
measured, so an interrupted run resumes at the toy it was on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parser():
    import argparse

    from hivtp.bootstrap import RESAMPLES
    from hivtp.toy.evaluate import HELD_OUT_SEED
    from hivtp.world import WORLDS
    from hivtp.zoo import TOY_TRAJECTORIES, artifacts_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(TOY_TRAJECTORIES),
                    help="trained toys (checkpoint names or folders), the reference first; the report names how their recipes differ (default: %(default)s)")
    ap.add_argument("--budget", type=int, default=64, help="tokens each method keeps; its pairs are compared")
    ap.add_argument("--per-family", type=int, default=300, help="held-out questions per family (default 300)")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out scene stream")
    ap.add_argument("--world", default=None, choices=WORLDS, help="default: the benchmarks' (hivtp.world.BENCHMARK_WORLD)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batch-size", type=int, default=16, help="questions per generate call")
    ap.add_argument("--resamples", type=int, default=RESAMPLES)
    ap.add_argument("--cache", default=str(artifacts_dir() / "trajectories"),
                    help="each toy's answers, kept as measured (default: %(default)s)")
    ap.add_argument("--out", default=None, help="also write the record (every answer and number) as JSON here, and the "
                                                "report beside it (the same name, .md), each atomically")
    ap.add_argument("--from-record", default=None, help="print the report of a written record again; loads no model")
    return ap


def world_of(ap, models: list[str], world: str | None) -> str:
    """The world to measure every toy in: ``world``, or else the benchmarks'. Toys trained on different
    worlds are not one recipe's trajectories: refused unless ``world`` is given."""
    from hivtp.toy.cli import measuring_world, trained_world

    worlds = {m: trained_world(m) for m in models}
    if world is None and len(set(worlds.values())) > 1:
        ap.error(f"the toys were trained on different worlds ({worlds}); they are not one recipe's trajectories. "
                 "Give --world to measure them all in one world anyway.")
    return measuring_world(models[0], world)


def measured_on(argv: list[str]) -> dict:
    """Where, when and by which command this run measures (kept with each toy's answers, so a record whose
    answers came from the cache names the run that measured them; ``measure_toys`` adds the code digest)."""
    import datetime

    import torch

    from hivtp.latency.fingerprint import device_name, git_commit

    return {"commit": git_commit(), "cpu": device_name(torch.device("cpu")),
            "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python scripts/toy_trajectories.py", *argv])}


def main(argv: list[str] | None = None) -> int:
    from hivtp.atomic import write_text
    from hivtp.toy import trajectories
    from hivtp.toy.cli import progress
    from toy_world_change import configurations

    ap = parser()
    args = ap.parse_args(argv)
    if args.from_record:
        if not Path(args.from_record).is_file():
            ap.error(f"--from-record {args.from_record}: no such file (make toy-trajectories writes results/toy_trajectories.json)")
        comparison = trajectories.from_record(json.loads(Path(args.from_record).read_text()))
        print(trajectories.report(comparison))
        return 0
    if args.per_family < 1:
        ap.error(f"--per-family must be >= 1, got {args.per_family}")
    if len(args.models) < 2 or len(set(args.models)) < len(args.models):
        ap.error(f"--models needs at least two different toys, got {args.models}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    world = world_of(ap, args.models, args.world)
    toys = trajectories.measure_toys(args.models, configurations(args.budget), args.per_family, args.seed, world,
                                     batch_size=args.batch_size, cache=Path(args.cache), progress=progress,
                                     provenance=measured_on(sys.argv[1:] if argv is None else argv))
    comparison = trajectories.compare(toys, args.budget, args.resamples)
    print(trajectories.report(comparison))
    if args.out:
        write_text(args.out, json.dumps(trajectories.record(comparison), indent=1) + "\n")
        write_text(Path(args.out).with_suffix(".md"), trajectories.report(comparison) + "\n")
        print(f"wrote {args.out} and its .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
