"""Command line: `creative-grpo <command>` (or `python -m lib.cli <command>`).

    creative-grpo run --profile smoke [--run-id ID] [--set train.max_steps=5 ...] [--stages 00,01]
    creative-grpo run --resume RUN_ID              # run what did not finish ok in that run
    creative-grpo runs                             # list the runs; says which `running` ones died (stale)
    creative-grpo stage RUN_ID 03                  # re-execute one stage of a run
    creative-grpo new --profile cpu [--set ...]    # an interactive run: notebooks opened with RUN_DIR "" continue it
    creative-grpo profiles | show-profile NAME | models
    creative-grpo infer --entity 椰子水 [--model NAME] [--adapter PATH_OR_RUN_ID]
    creative-grpo serve --profile cpu [--host 127.0.0.1 --port 8000 --token T]   # the reward server (lib.serve)
    creative-grpo sweep lib/assets/sweeps/smoke_lr.yaml [--sweep-id ID] [--only V1,V2] [--dry-run]   # variants of a profile
    creative-grpo sweep --resume SWEEP_ID          # continue a sweep: finished runs are not redone
    creative-grpo compare RUN_ID ... | --sweep SWEEP_ID [--out DIR]   # one table, overlaid curves, compare.html

Errors of ours (exceptions defined in `lib.*`) print one line `error: …` on stderr and exit with 2;
a failed pipeline exits with 1; a run stopped by SIGINT / SIGTERM / SIGHUP says so in one line and exits with 128 + the
signal number (130, 143, 129). Anything else keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _stages(text: str) -> list[str]:
    return [s for s in (x.strip() for x in text.split(",")) if s]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creative-grpo", description="GRPO for creative ad copy: pipeline runs and tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the notebook pipeline into outputs/runs/<run-id>/")
    p.add_argument("--profile", help="profile name (lib/assets/profiles/NAME.yaml) or a YAML path")
    p.add_argument("--run-id", help="name of the run directory (default: <utc-time>-<profile>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override a profile parameter (value parsed as YAML); repeatable")
    p.add_argument("--stages", type=_stages, help="comma-separated stage numbers or names to run, e.g. 00,01")
    p.add_argument("--resume", metavar="RUN_ID", help="continue an existing run: re-run its stages that are not ok")

    sub.add_parser("runs", help="list the runs in outputs/runs/ with their status (stale: `running` but its process died)")

    p = sub.add_parser("stage", help="re-execute one stage of an existing run (the previous copy is kept)")
    p.add_argument("run_id", metavar="RUN_ID", help="run id (under outputs/runs/) or run directory")
    p.add_argument("stage", metavar="STAGE", help='stage number ("03") or name ("03_grpo_training")')

    p = sub.add_parser("new", help="create an interactive run that notebooks opened in JupyterLab continue")
    p.add_argument("--profile", default="smoke", help="profile name or YAML path (set the same PROFILE in the notebooks)")
    p.add_argument("--run-id", help="name of the run directory (default: <utc-time>-<profile>-interactive)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                   help="override a profile parameter (value parsed as YAML); repeatable")

    sub.add_parser("profiles", help="list the profiles")
    p = sub.add_parser("show-profile", help="print a resolved profile as YAML")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE")
    sub.add_parser("models", help="list the model registry")

    p = sub.add_parser("infer", help="write one ad with a model (optionally with a LoRA adapter)")
    p.add_argument("--entity", required=True, help="what the ad is for, e.g. 椰子水")
    p.add_argument("--model", default=None, help="registry name, hub id or path (default: chosen by lib.infer)")
    p.add_argument("--adapter", default=None, help="LoRA adapter directory or a run id (its final adapter)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("serve", help="serve the profile's rewards and judge over HTTP (lib.serve)")
    p.add_argument("--profile", default="cpu", help="profile whose judge, rubric and reward weights are served")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' (default $CREATIVE_GRPO_REWARD_TOKEN)")
    p.add_argument("--max-batch", type=int, default=128, help="completions per merged judge call")
    p.add_argument("--max-wait-ms", type=float, default=20.0, help="how long a request waits for others to merge with")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE")
    p = sub.add_parser("sweep", help="run the variants of a sweep file, each a run (lib.sweep; docs/experiments.md)")
    p.add_argument("file", nargs="?", metavar="SWEEP.yaml", help="sweep definition (e.g. lib/assets/sweeps/smoke_lr.yaml)")
    p.add_argument("--resume", metavar="SWEEP_ID", help="continue a sweep (id under outputs/sweeps/ or its directory)")
    p.add_argument("--sweep-id", help="name of the sweep directory (default: <utc-time>-<name>)")
    p.add_argument("--only", type=_stages, help="comma-separated variants to run (one process per variant: joins the sweep)")
    p.add_argument("--dry-run", action="store_true", help="print what would run, share or be skipped; run nothing")

    p = sub.add_parser("compare", help="compare runs: one table, overlaid training curves, compare.html (lib.compare)")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids (under outputs/runs/) or run directories")
    p.add_argument("--sweep", metavar="SWEEP_ID", help="the runs of a sweep (outputs/sweeps/<id>/)")
    p.add_argument("--out", help="output folder (default: <sweep>/compare/, or outputs/compare/<utc-time>/)")
    return parser


def _cmd_sweep(args: argparse.Namespace) -> int:
    from lib.sweep import SweepError, load_sweep, load_sweep_dir, plan, run_sweep

    if bool(args.file) == bool(args.resume):
        raise SweepError("sweep needs a sweep file or --resume SWEEP_ID (one of them)")
    if args.only and not (args.sweep_id or args.resume):
        raise SweepError("sweep --only needs --sweep-id ID (or --resume ID): the processes of one sweep share its id")
    sweep = load_sweep_dir(args.resume) if args.resume else load_sweep(args.file, args.sweep_id)
    if args.dry_run:
        for row in plan(sweep):
            print(json.dumps(row, ensure_ascii=False))
        return 0
    statuses = run_sweep(sweep, only=args.only, join=bool(args.resume or args.only))
    failed = [v for v, s in statuses.items() if s != "ok"]
    print(sweep.dir)
    if failed:
        print(f"error: sweep {sweep.sweep_id}: failed variants: {', '.join(failed)} (continue with --resume {sweep.sweep_id})",
              file=sys.stderr)
    return 1 if failed else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from lib.compare import CompareError, compare_cli

    if bool(args.runs) == bool(args.sweep):
        raise CompareError("compare needs run ids or --sweep SWEEP_ID (one of them)")
    print(compare_cli(args.runs, args.sweep, args.out))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from lib.pipeline import run_pipeline
    from lib.runlock import exit_code, signal_name

    try:
        run_dir = run_pipeline(args.profile or "", run_id=args.run_id, overrides=args.overrides,
                               stages=args.stages, resume=args.resume)
    except KeyboardInterrupt as exc:  # the manifest already says `interrupted`; pipeline.log has the resume command
        print(f"interrupted by {signal_name(exc)}", file=sys.stderr)
        return exit_code(exc)
    print(run_dir)
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    from lib import paths
    from lib.runlock import run_lines

    for line in run_lines(paths.RUNS_DIR):
        print(line)
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from lib.pipeline import run_stage

    print(run_stage(args.run_id, args.stage))
    return 0


def _cmd_new(args: argparse.Namespace) -> int:
    from lib.profiles import parse_overrides
    from lib.run import new_interactive_run

    run_dir = new_interactive_run(args.profile, parse_overrides(args.overrides), args.run_id)
    sizing = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("sizing") or {}
    if sizing:  # stdout is the run directory alone (scripts read it); the sizing goes to stderr
        print(f"sizing: {sizing['chosen']} ({sizing['why']})", file=sys.stderr)
    print(run_dir)
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from lib.profiles import ProfileError, available_profiles, load_profile

    for name in available_profiles():
        try:
            desc = load_profile(name).description
        except ProfileError as exc:
            desc = f"(invalid: {exc})"
        print(f"{name:<10} {desc}")
    return 0


def _cmd_show_profile(args: argparse.Namespace) -> int:
    from lib.profiles import dump_profile, load_profile, parse_overrides

    print(dump_profile(load_profile(args.name, overrides=parse_overrides(args.overrides))), end="")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from lib.models import REGISTRY

    rows = [(s.name, s.kind, s.source, s.note) for s in REGISTRY.values()]
    widths = [max(len(r[i]) for r in rows + [("name", "kind", "source", "note")]) for i in range(3)]
    for row in [("name", "kind", "source", "note"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from lib.infer import generate_ad  # lazy: loads torch / transformers

    result = generate_ad(args.entity, args.model, args.adapter, args.max_new_tokens, args.seed)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2, default=str))
    else:
        print(f"<think>\n{result.get('think') or ''}\n</think>\n<answer>\n{result.get('answer') or ''}\n</answer>")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from lib.profiles import parse_overrides
    from lib.serve.scorer import Limits
    from lib.serve.server import serve

    serve(args.profile, args.host, args.port, args.token, parse_overrides(args.overrides),
          Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms))
    return 0


_COMMANDS = {"run": _cmd_run, "runs": _cmd_runs, "stage": _cmd_stage, "new": _cmd_new, "profiles": _cmd_profiles,
             "show-profile": _cmd_show_profile, "models": _cmd_models, "infer": _cmd_infer, "serve": _cmd_serve,
             "sweep": _cmd_sweep, "compare": _cmd_compare}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), run the command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and not (args.profile or args.resume):
        parser.error("run needs --profile NAME (or --resume RUN_ID)")
    try:
        return _COMMANDS[args.command](args)
    except Exception as exc:
        if not type(exc).__module__.startswith("lib."):
            raise  # not one of ours: keep the traceback
        from lib.pipeline import PipelineError

        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1 if isinstance(exc, PipelineError) else 2


if __name__ == "__main__":
    sys.exit(main())
