"""Sweeps: one base profile, several named variants (`--set` overrides or a small grid), each an ordinary run.

    python -m lib.cli sweep lib/assets/sweeps/smoke_lr.yaml             # a new sweep: outputs/sweeps/<utc>-<name>/
    python -m lib.cli sweep --resume 20261201-130000-smoke_lr    # continue it: finished runs are never redone
    python -m lib.cli sweep S.yaml --sweep-id night --only lr-big  # one variant (one process per variant, any launcher)

A sweep file (validated on load; an error names the file and the field):

    name: smoke_lr                  # optional, default the file's stem
    base: smoke                     # profile name or YAML path (relative to the sweep file, else the working dir)
    set: [train.max_steps=2]        # optional: overrides of every variant
    variants:                       # name -> `--set` strings, or a nested mapping of the same keys
      lr-small: [train.learning_rate=1.0e-5]
      lr-big: {train: {learning_rate: 5.0e-5}}
    grid:                           # optional: every combination is one more variant, named key=value_key=value
      train.beta: [0.0, 0.04]

Overrides merge into the profile exactly as `--set` does (a mapping merges into the profile's mapping).

Stages whose inputs do not vary are run once and shared: `SHARED_STAGES` lists the profile fields each stage
reads (00-02: checked against the notebooks; training: everything but evaluation and case studies; evaluation:
everything but case studies). A variant whose fields, CPU class and git SHA equal those of a finished stage of another
run of the sweep gets a copy of that stage's folder, executed notebook and results, marked in its manifest
(`shared_from`), and runs the rest with `lib.pipeline.run_pipeline(resume=...)`. Training is only taken with every
stage before it, and evaluation only with the training it scored: a sweep over evaluation settings trains once, a
sweep over case-study settings trains and evaluates once. Case studies (05) always run.
The sweep directory holds the definition (`sweep.yaml`), the base profile as it was (`base/`) and `sweep.json`
(variants, run ids, statuses); the runs themselves are ordinary run directories under outputs/runs/.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lib import paths
from lib.profiles import Profile, ProfileError, load_profile, parse_overrides, profile_path, read_yaml

# stage -> the profile fields its notebook reads (dotted; a section name covers the whole section). Conservative:
# anything a stage might read is listed. The key also holds the CPU class and git SHA of the run that computed it.
# Training and evaluation take the whole profile to library calls, so their keys hold every field but those of later
# stages (`sizing` is left out: the key is taken on the profile it already sized).
_NOT_READ_BEFORE_EVAL = {"name", "description", "sizing", "eval", "case_studies"}
SHARED_STAGES: dict[str, tuple[str, ...]] = {
    "00_build_data": ("seed", "device", "policy_model", "data"),
    "01_rubric_design": ("rubric",),
    "02_judge_calibration": ("seed", "device", "judge", "rubric.path", "eval.n_bootstrap", "calibration_max_texts",
                             "calibration_probe_texts", "calibration_pad_levels", "calibration_adversarial_max_pass",
                             "calibration_adversarial_entities", "calibration"),
    "03_grpo_training": tuple(f for f in Profile.model_fields if f not in _NOT_READ_BEFORE_EVAL),
}
SHARED_STAGES["04_evaluation"] = SHARED_STAGES["03_grpo_training"] + ("eval",)
STAGE_FOLDERS = {"00_build_data": "data", "01_rubric_design": "rubric", "02_judge_calibration": "calibration",
                 "03_grpo_training": "train", "04_evaluation": "eval"}
# stages whose outputs come from one model's training: a run takes them from one donor only (its eval scores that
# donor's adapter)
_ONE_DONOR = ("03_grpo_training", "04_evaluation")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


class SweepError(ValueError):
    """A sweep file or directory that cannot be used; one line naming it and the field."""


Overrides = list[str] | dict[str, Any]


class SweepDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=_NAME.pattern)
    description: str = ""
    base: str
    set: Overrides = []
    variants: dict[str, Overrides] = {}
    grid: dict[str, list[Any]] = {}


@dataclass
class Variant:
    name: str
    overrides: list[str]  # the base `set` then the variant's own, as `--set` strings
    run_id: str


def sweeps_dir() -> Path:
    """outputs/sweeps/, beside outputs/runs/ (wherever RUNS_DIR points)."""
    return paths.RUNS_DIR.parent / "sweeps"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------------------------
# Definition
# ----------------------------------------------------------------------------------------------

def _yaml_value(v: Any) -> str:
    text = yaml.safe_dump(v, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text[:-4].strip() if text.endswith("\n...") else text


def _flatten(node: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out += _flatten(v, key + ".") if isinstance(v, dict) and v else [f"{key}={_yaml_value(v)}"]
    return out


def as_set_strings(value: Overrides, where: str) -> list[str]:
    """A variant's overrides as `--set` strings (a mapping is flattened to dotted keys; same merge as `--set`)."""
    if isinstance(value, dict):
        strings = _flatten(value)
        if parse_overrides(strings) != (value or None):  # round trip through the same parser `--set` uses
            raise SweepError(f"{where}: cannot be written as --set overrides: {value!r}")
        return strings
    for s in value:
        if not isinstance(s, str) or "=" not in s or not s.split("=", 1)[0].strip():
            raise SweepError(f"{where}: {s!r} must look like key.sub=value")
    return list(value)


def _grid_name(combo: list[tuple[str, Any]]) -> str:
    name = "_".join(f"{k.split('.')[-1]}={_yaml_value(v)}" for k, v in combo)
    return re.sub(r"[^A-Za-z0-9_.=+-]", "-", name)


def _base_path(base: str, sweep_file: Path) -> Path:
    p = Path(base)
    if p.suffix in (".yaml", ".yml") and not p.is_absolute() and (sweep_file.parent / p).exists():
        return sweep_file.parent / p
    return profile_path(base)


@dataclass
class Sweep:
    file: Path  # the definition read
    definition: SweepDef
    base_file: Path  # the base profile's YAML
    variants: list[Variant]
    sweep_id: str

    @property
    def dir(self) -> Path:
        return sweeps_dir() / self.sweep_id

    def profile(self, v: Variant) -> Profile:
        return load_profile(self.base_file, overrides=parse_overrides(v.overrides))


def load_sweep(file: str | Path, sweep_id: str | None = None) -> Sweep:
    """Read and validate a sweep file: every variant's profile is loaded, so a bad key fails before any run starts."""
    file = Path(file)
    if not file.exists():
        raise SweepError(f"sweep file not found: {file}")
    raw = read_yaml(file, SweepError)
    if not isinstance(raw, dict):
        raise SweepError(f"{file}: a sweep must be a mapping (base, variants, grid), got {type(raw).__name__}")
    raw.setdefault("name", file.stem)
    try:
        d = SweepDef.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(x) for x in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            raise SweepError(f"{file}: unknown field {where!r} (known: {', '.join(SweepDef.model_fields)})") from None
        raise SweepError(f"{file}: {where}: {e['msg']} (got {e.get('input')!r})") from None
    try:
        base_file = _base_path(d.base, file)
    except ProfileError as exc:
        raise SweepError(f"{file}: base: {exc}") from None
    common = as_set_strings(d.set, f"{file}: set")
    named: list[tuple[str, list[str]]] = []
    for name, ov in d.variants.items():
        if not _NAME.match(str(name)):
            raise SweepError(f"{file}: variants.{name}: a variant name is letters, digits and _.=+- (it names a run)")
        named.append((str(name), as_set_strings(ov, f"{file}: variants.{name}")))
    if d.grid:
        for key, values in d.grid.items():
            if not values:
                raise SweepError(f"{file}: grid.{key}: needs at least one value")
        for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in d.grid.items()]):
            named.append((_grid_name(list(combo)), [f"{k}={_yaml_value(v)}" for k, v in combo]))
    if not named:
        raise SweepError(f"{file}: no variants: give `variants` or `grid`")
    seen: dict[str, str] = {}
    sweep_id = sweep_id or f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{d.name}"
    variants = []
    for name, ov in named:
        if name in seen:
            raise SweepError(f"{file}: two variants are named {name!r}")
        try:
            prof = load_profile(base_file, overrides=parse_overrides(common + ov))
        except ProfileError as exc:
            raise SweepError(f"{file}: variants.{name}: {exc}") from None
        fingerprint = json.dumps(prof.model_dump(mode="json"), sort_keys=True)
        if fingerprint in seen.values():
            other = next(n for n, f in seen.items() if f == fingerprint)
            raise SweepError(f"{file}: variants {other!r} and {name!r} give the same profile")
        seen[name] = fingerprint
        variants.append(Variant(name, common + ov, f"{sweep_id}-{name}"))
    return Sweep(file, d, base_file, variants, sweep_id)


# ----------------------------------------------------------------------------------------------
# Sweep directory
# ----------------------------------------------------------------------------------------------

@contextmanager
def _locked(sweep_dir: Path):
    with open(sweep_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _definition_text(sweep: Sweep) -> str:
    d = sweep.definition.model_dump(mode="json")
    d["base"] = f"base/{sweep.base_file.name}"  # the copy in the sweep directory: a resume sees the profile as it was
    return yaml.safe_dump(d, allow_unicode=True, sort_keys=False)


def open_sweep_dir(sweep: Sweep, join: bool = False) -> Path:
    """Create the sweep's directory, or (`join`) use an existing one whose definition is the same."""
    d = sweep.dir
    text = _definition_text(sweep)
    try:
        d.mkdir(parents=True)
    except FileExistsError:
        if not join:
            raise SweepError(f"sweep directory already exists: {d} (continue it with --resume {sweep.sweep_id})") from None
        old = (d / "sweep.yaml").read_text(encoding="utf-8") if (d / "sweep.yaml").exists() else None
        if old is not None and old != text:
            raise SweepError(f"{d / 'sweep.yaml'}: differs from {sweep.file}: a sweep keeps its definition (choose another --sweep-id)")
        if old is not None:
            return d
    (d / "base").mkdir(exist_ok=True)
    shutil.copy2(sweep.base_file, d / "base" / sweep.base_file.name)
    with _locked(d):
        if not (d / "sweep.yaml").exists():
            (d / "sweep.yaml").write_text(text, encoding="utf-8")
            _write_state(d, {"sweep_id": sweep.sweep_id, "name": sweep.definition.name, "source": str(sweep.file),
                             "created_at": _now(), "variants": [_variant_entry(v) for v in sweep.variants]})
    return d


def _variant_entry(v: Variant) -> dict:
    return {"name": v.name, "run_id": v.run_id, "overrides": v.overrides, "status": "pending"}


def _write_state(d: Path, state: dict) -> None:
    tmp = d / f"sweep.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, d / "sweep.json")


def read_state(sweep_dir: Path) -> dict:
    p = Path(sweep_dir) / "sweep.json"
    if not p.exists():
        raise SweepError(f"{sweep_dir}: not a sweep directory (no sweep.json)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SweepError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def resolve_sweep_dir(sweep_id_or_path: str | Path) -> Path:
    p = Path(sweep_id_or_path)
    for candidate in (p, sweeps_dir() / str(sweep_id_or_path)):
        if (candidate / "sweep.json").exists():
            return candidate
    raise SweepError(f"unknown sweep {str(sweep_id_or_path)!r}: neither a sweep directory nor one in {sweeps_dir()}")


def load_sweep_dir(sweep_id_or_path: str | Path) -> Sweep:
    """The sweep of an existing directory, from its own copy of the definition and base profile."""
    d = resolve_sweep_dir(sweep_id_or_path)
    state = read_state(d)
    sweep = load_sweep(d / "sweep.yaml", sweep_id=state["sweep_id"])
    recorded = {v["name"]: v["run_id"] for v in state.get("variants", [])}
    for v in sweep.variants:
        v.run_id = recorded.get(v.name, v.run_id)
    return sweep


def sweep_runs(sweep_id_or_path: str | Path) -> list[tuple[str, Path]]:
    """(variant, run directory) of every variant of a sweep, in the definition's order (existing runs only)."""
    state = read_state(resolve_sweep_dir(sweep_id_or_path))
    return [(v["name"], paths.RUNS_DIR / v["run_id"]) for v in state.get("variants", []) if (paths.RUNS_DIR / v["run_id"]).is_dir()]


def _set_status(d: Path, name: str, **fields) -> None:
    with _locked(d):
        state = read_state(d)
        for v in state["variants"]:
            if v["name"] == name:
                v.update(fields, updated_at=_now())
        _write_state(d, state)


# ----------------------------------------------------------------------------------------------
# Sharing of stages
# ----------------------------------------------------------------------------------------------

def _field(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def stage_key(prof: Profile, stage: str, cpu_class: str | None, git_sha: str | None) -> str:
    """Hash of what `stage` reads: its profile fields (SHARED_STAGES), the CPU class and the code's git SHA."""
    dumped = prof.model_dump(mode="json")
    material = {f: _field(dumped, f) for f in SHARED_STAGES[stage]}
    material["_machine"], material["_git_sha"] = cpu_class, git_sha
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    except json.JSONDecodeError:
        return {}


def find_donors(prof: Profile, run_ids: list[str], cpu_class: str | None, git_sha: str | None) -> dict[str, Path]:
    """stage -> a finished run among `run_ids` whose copy of that stage this profile can take.

    Training is only taken with every stage before it, evaluation only with the training it scored (from a run that
    computed or copied that training)."""
    cands: dict[str, list[Path]] = {s: [] for s in SHARED_STAGES}
    origin: dict[tuple[str, str], str] = {}  # (run, stage) -> the run that computed it
    for run_id in run_ids:
        rd = paths.RUNS_DIR / run_id
        manifest = _read_json(rd / "manifest.json")
        if not manifest or not (rd / "profile.yaml").exists():
            continue
        try:
            donor_prof = load_profile(rd / "profile.yaml")
        except ProfileError:
            continue
        entries = {e.get("name"): e for e in manifest.get("notebooks", [])}
        donor_class = (manifest.get("machine") or {}).get("cpu_class")
        for stage in SHARED_STAGES:
            entry = entries.get(stage) or {}
            if entry.get("status") == "ok" and (rd / STAGE_FOLDERS[stage]).is_dir() and \
                    stage_key(donor_prof, stage, donor_class, manifest.get("git_sha")) == stage_key(prof, stage, cpu_class, git_sha):
                cands[stage].append(rd)
                origin[rd.name, stage] = entry.get("shared_from") or rd.name
    train, evaluation = _ONE_DONOR
    evaluated = {origin[r.name, train] for r in cands[evaluation] if (r.name, train) in origin}
    donors: dict[str, Path] = {}
    for i, stage in enumerate(SHARED_STAGES):
        runs = cands[stage]
        if stage in _ONE_DONOR and len(donors) < i:  # training and evaluation only with every stage before them
            break
        if stage == train:  # prefer a training whose evaluation can be taken too
            runs = sorted(runs, key=lambda r: origin[r.name, train] not in evaluated)
        elif stage == evaluation:
            runs = [r for r in runs if origin.get((r.name, train)) == origin[donors[train].name, train]]
        if runs:
            donors[stage] = runs[0]
    return donors


def create_shared_run(prof: Profile, sizing: dict, variant: Variant, base_file: Path, donors: dict[str, Path],
                      cpu_class: str | None, git_sha: str | None) -> Path:
    """A new run directory holding copies of the donors' stages, with a manifest that `run_pipeline(resume=)` continues."""
    from lib.run import create_run_dir

    run_dir = create_run_dir(prof, variant.run_id)
    results: dict = {}
    entries, shared = [], {}
    for stage, donor in donors.items():
        folder = STAGE_FOLDERS[stage]
        shutil.copytree(donor / folder, run_dir / folder, symlinks=True)
        nb = donor / "notebooks" / f"{stage}.ipynb"
        if nb.exists():
            (run_dir / "notebooks").mkdir(exist_ok=True)
            shutil.copy2(nb, run_dir / "notebooks" / nb.name)
        donor_manifest = _read_json(donor / "manifest.json")
        entry = next(e for e in donor_manifest["notebooks"] if e.get("name") == stage)
        origin = entry.get("shared_from") or donor.name  # a copy of a copy names the run that computed it
        entries.append({**entry, "shared_from": origin, "shared_key": stage_key(prof, stage, cpu_class, git_sha)})
        shared[stage] = origin
        results.update({k: v for k, v in _read_json(donor / "results.json").items() if k.startswith(folder + ".")})
    (run_dir / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2), encoding="utf-8")
    manifest = {"run_id": run_dir.name, "profile": prof.name, "profile_source": str(base_file),
                "overrides": variant.overrides, "sizing": sizing, "status": "created", "shared": shared,
                "notebooks": entries}
    tmp = run_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, run_dir / "manifest.json")  # last: a crash while copying leaves no "ok" entry behind
    return run_dir


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------

def plan(sweep: Sweep) -> list[dict]:
    """What running the sweep now would do per variant: skip (finished), resume, or start (sharing which stages)."""
    from lib.estimate import size_for_machine
    from lib.hardware import cpu_class
    from lib.pipeline import git_state, read_manifest

    sha, klass = git_state()[0], cpu_class()
    ids = [v.run_id for v in sweep.variants]
    rows, keys = [], {}
    for v in sweep.variants:
        rd = paths.RUNS_DIR / v.run_id
        prof, _ = size_for_machine(sweep.profile(v))
        keys[v.name] = {s: stage_key(prof, s, klass, sha) for s in SHARED_STAGES}
        if rd.exists():
            status = read_manifest(rd).get("status")
            rows.append({"variant": v.name, "run_id": v.run_id, "action": "skip" if status == "ok" else "resume", "status": status})
            continue
        donors = find_donors(prof, [i for i in ids if i != v.run_id], klass, sha)
        # run in order, a stage not shared now is taken from the first earlier variant with the same key
        later = {}
        for i, s in enumerate(SHARED_STAGES):
            first = next(n for n in keys if keys[n][s] == keys[v.name][s])
            if s in _ONE_DONOR and len(later) + len(donors) < i:
                break
            if s not in donors and first != v.name:
                later[s] = first
        rows.append({"variant": v.name, "run_id": v.run_id, "action": "start",
                     "shared": {s: d.name for s, d in donors.items()},
                     "shared_when_run_in_order": later})
    return rows


def run_sweep(sweep: Sweep, only: list[str] | None = None, join: bool = False,
              log: Callable[[str], None] = print) -> dict[str, str]:
    """Run the sweep's variants one after another (those named in `only`); returns variant -> final status.

    A variant whose run finished ok is never redone; one that began is continued (`run_pipeline(resume=)`); a new one
    takes the stages it can share from finished runs of the sweep. A failing variant is recorded and the next runs.
    """
    from lib.estimate import size_for_machine
    from lib.hardware import cpu_class
    from lib.pipeline import PipelineError, git_state, read_manifest, run_pipeline
    from lib.run import RunError

    names = [v.name for v in sweep.variants]
    for name in only or []:
        if name not in names:
            raise SweepError(f"{sweep.file}: no variant {name!r}; variants: {', '.join(names)}")
    d = open_sweep_dir(sweep, join=join)
    kept = d / "base" / sweep.base_file.name
    if kept.read_bytes() != sweep.base_file.read_bytes():
        raise SweepError(f"{sweep.base_file}: differs from the sweep's copy {kept}: a sweep keeps its base profile "
                         f"(continue it with --resume {sweep.sweep_id})")
    sweep.base_file = kept
    sha, klass = git_state()[0], cpu_class()
    ids = [v.run_id for v in sweep.variants]
    done: dict[str, str] = {}
    for v in sweep.variants:
        if only and v.name not in only:
            continue
        rd = paths.RUNS_DIR / v.run_id
        status = read_manifest(rd).get("status") if rd.exists() else None
        if status == "ok":
            log(f"sweep {sweep.sweep_id}: {v.name}: finished earlier ({v.run_id}), not redone")
            _set_status(d, v.name, status="ok")
            done[v.name] = "ok"
            continue
        _set_status(d, v.name, status="running", started_at=_now())
        try:
            if rd.exists():
                log(f"sweep {sweep.sweep_id}: {v.name}: continuing {v.run_id} (was {status})")
                run_pipeline("", resume=str(rd))
            else:
                prof, sizing = size_for_machine(sweep.profile(v))
                donors = find_donors(prof, [i for i in ids if i != v.run_id], klass, sha)
                if donors:
                    log(f"sweep {sweep.sweep_id}: {v.name}: sharing " +
                        ", ".join(f"{s} of {r.name}" for s, r in donors.items()))
                    create_shared_run(prof, sizing, v, sweep.base_file, donors, klass, sha)
                    run_pipeline("", resume=v.run_id)
                else:
                    log(f"sweep {sweep.sweep_id}: {v.name}: starting {v.run_id}")
                    run_pipeline(str(sweep.base_file), run_id=v.run_id, overrides=v.overrides)
            done[v.name] = "ok"
        except (PipelineError, RunError) as exc:
            log(f"sweep {sweep.sweep_id}: {v.name}: FAILED: {exc}")
            done[v.name] = "failed"
        except KeyboardInterrupt:
            _set_status(d, v.name, status="interrupted")
            raise
        _set_status(d, v.name, status=done[v.name], ended_at=_now())
    return done
