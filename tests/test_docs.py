"""The docs stay true: every fenced block of README.md and docs/*.md is checked, and the layout table matches lib/.

Each fenced block names its check in the info string after the language (```` ```bash check ````); a block without
one, or with an unknown one, fails `test_every_block_is_classified`. The checks:

- `check` (shell): `bash -n` on the block, then every command on its own, validated without running it:
  `python -m lib.X ARGS` is parsed by the module's real argparse parser (the module runs up to `parse_args`,
  nothing after), `--profile NAME` must name a profile, every `--set key=value` must load into that profile (or,
  without `--profile`, into at least one); `lib.cli` commands in `RUN_FOR_REAL` then run for real (in-process,
  they must exit 0 and print); `make ARGS` runs as `make -n ARGS` (the target exists, the recipe
  expands); `bash FILE` is `bash -n FILE`; `curl` posts its JSON body to the reward server's real app (a keyword
  judge stands in for the model) and the keys of the `# {...}` answer documented under it must be in the reply;
  `accelerate launch` needs its `--config_file` and validates the `-m lib.X` after it; `hf` gets `SUBCOMMAND
  --help`. Programs that cannot run here (`vllm serve`, `trl vllm-serve`, OpenRLHF, verl: CUDA or not installed)
  are in `EXTERNAL` with the reason; their repository paths must still exist. Placeholders `<run-id>`, `…`, `...`
  stand for a value.
- `output` (a program's printed lines): each line's `label:` must still be printed by lib/ (a string literal).
- a name in `PYTHON_BLOCKS`: the block is executed, with only what needs a model or a network replaced (named there).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from lib.paths import PROJ_ROOT as REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell"}
# Programs the suite cannot run here, and why; their commands are still checked for repository paths.
EXTERNAL = {
    "vllm": "CUDA vLLM on a GPU machine (the CPU build here would start an engine)",
    "trl": "`trl vllm-serve` starts a CUDA vLLM server",
    "python -m openrlhf": "OpenRLHF is not a dependency of this project",
    "python -m verl": "verl is not a dependency of this project",
    "papermill": "executes a notebook (tests/test_sweep_smoke.py runs 06 through papermill's API with these parameters)",
    "tensorboard": "starts a web server (its events are checked by tests/test_sweep_smoke.py)",
}
PLACEHOLDER = "PLACEHOLDER"
RUN_FOR_REAL = {"profiles", "models", "show-profile"}  # `python -m lib.cli` commands cheap enough to run here
PLACEHOLDERS = ("<run-id>", "<id>", "<repo>")  # written for a value in commands


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    kind: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(`{3,}|~{3,})\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group(1), m.group(2).split()
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        out.append(Block(path, i + 1, info[0] if info else "", " ".join(info[1:]), "\n".join(lines[i + 1:j])))
        i = j + 1
    return out


ALL_BLOCKS = [b for p in DOCS for b in fenced_blocks(p)]


# ---------------------------------------------------------------------------------------------------- commands

def logical_lines(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            out.append(line)
    return out


def simple_commands(line: str) -> list[list[str]]:
    """`a; b && c` and `for x in …; do cmd; done` as token lists of the simple commands (loop headers dropped)."""
    for name in PLACEHOLDERS:
        line = line.replace(name, "RUN-ID")
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    out, cur = [], []
    for tok in [*lex, ";"]:
        if tok in (";", "&&", "||", "|", "&"):
            tokens, cur = cur, []
            if not tokens or tokens[0] == "for" or tokens == ["done"]:
                continue
            if tokens[0] == "do":
                tokens = tokens[1:]
            while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):  # VAR=value prefixes
                tokens = tokens[1:]
            if tokens:
                out.append([PLACEHOLDER if t in ("…", "...") else t.replace("…", PLACEHOLDER) for t in tokens])
        else:
            cur.append(tok)
    return out


class _Parsed(Exception):
    def __init__(self, namespace):
        self.namespace = namespace


def parse_module_args(module: str, args: list[str], where: str) -> argparse.Namespace:
    """Run `python -m module args` up to its argparse `parse_args` (the real parser), nothing after it."""
    real = argparse.ArgumentParser.parse_args

    def stop(self, a=None, namespace=None):
        raise _Parsed(real(self, a, namespace))

    argv = sys.argv
    argparse.ArgumentParser.parse_args = stop
    sys.argv = [module, *args]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            # runpy warns that lib.x is already imported: expected here, as the module runs only up to parse_args
            warnings.filterwarnings("ignore", "'(lib|bench)", RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=False)
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as e:  # argparse refused the arguments
        raise AssertionError(f"{where}: the parser exited with {e.code}: {err.getvalue().strip()}") from None
    finally:
        argparse.ArgumentParser.parse_args = real
        sys.argv = argv
    raise AssertionError(f"`python -m {module}` never called argparse's parse_args")


def check_profile_args(args: list[str], where: str) -> None:
    from lib.profiles import available_profiles, load_profile, parse_overrides

    def values(flag):
        return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag] + \
               [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]

    profiles = values("--profile")
    for name in profiles:
        assert name in available_profiles() or (REPO_ROOT / name).is_file(), f"{where}: no profile {name!r}"
    sets = [s for s in values("--set") if PLACEHOLDER not in s]
    if not sets:
        return
    overrides = parse_overrides(sets)
    errors = []
    for name in profiles or available_profiles():
        try:
            load_profile(name, overrides)
            return
        except Exception as e:  # noqa: BLE001 - the message is what the test reports
            errors.append(f"{name}: {e}")
    raise AssertionError(f"{where}: --set {sets} loads into no profile: {errors}")


def check_repo_paths(tokens: list[str], where: str) -> None:
    for t in tokens:
        for piece in re.split(r"[=,]", t):
            piece = re.sub(r"^(\$PWD|RUN-ID)/", "", piece)
            if re.match(r"^(lib|bench|scripts|docs|notebooks|tests)/[\w./-]+$", piece) and "RUN-ID" not in piece:
                assert (REPO_ROOT / piece).exists(), f"{where}: {piece} does not exist"


def check_python_m(tokens: list[str], where: str) -> None:
    """tokens: [python, -m, module, args...]"""
    module, args = tokens[2], tokens[3:]
    for prefix in EXTERNAL:
        if prefix.startswith("python -m ") and (module + ".").startswith(prefix.split()[-1] + "."):
            check_repo_paths(args, where)
            return
    assert module.split(".")[0] in ("lib", "bench"), f"{where}: `python -m {module}` is neither ours nor in EXTERNAL"
    parse_module_args(module, args, where)
    check_profile_args(args, where)
    check_repo_paths(args, where)
    if module == "lib.cli" and args[:1] and args[0] in RUN_FOR_REAL and PLACEHOLDER not in " ".join(args):
        from lib.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(args)
        assert rc == 0 and out.getvalue().strip(), f"{where}: exited {rc} with {out.getvalue()[-300:]!r}"


def check_command(tokens: list[str], block: Block, srv) -> None:
    where = f"{block.where}: `{shlex.join(tokens)}`"
    prog = tokens[0]
    if prog in ("python", "python3", ".venv/bin/python") and tokens[1:2] == ["-m"]:
        check_python_m(tokens, where)
    elif prog == "make":
        r = subprocess.run(["make", "-n", *tokens[1:]], cwd=REPO_ROOT, capture_output=True, text=True,
                           env={**os.environ, "VENV": str(Path(sys.executable).parent.parent)})
        assert r.returncode == 0, f"{where}: make -n failed: {r.stderr.strip()}"
    elif prog == "bash":
        assert (REPO_ROOT / tokens[1]).is_file(), f"{where}: no {tokens[1]}"
        r = subprocess.run(["bash", "-n", tokens[1]], cwd=REPO_ROOT, capture_output=True, text=True)
        assert r.returncode == 0, f"{where}: {r.stderr.strip()}"
    elif prog == "hf":
        r = subprocess.run([str(Path(sys.executable).parent / "hf"), tokens[1], "--help"], capture_output=True, text=True)
        assert r.returncode == 0, f"{where}: hf {tokens[1]} --help failed: {r.stderr.strip()[-300:]}"
    elif prog == "accelerate":
        assert tokens[1] == "launch", where
        args = tokens[2:]
        assert "--config_file" in args, f"{where}: no --config_file"
        cfg = args[args.index("--config_file") + 1]
        assert (REPO_ROOT / cfg).is_file(), f"{where}: no {cfg}"
        if "-m" in args:
            check_python_m(["python", *args[args.index("-m"):]], where)
        else:  # a script written out in the same page
            script = next(a for a in args if a.endswith(".py"))
            assert f"# {script}" in block.path.read_text(encoding="utf-8"), f"{where}: {script} is not written out in the page"
    elif prog == "curl":
        srv.check(tokens, block, where)
    elif prog in EXTERNAL:
        check_repo_paths(tokens, where)
    else:
        raise AssertionError(f"{where}: no check for program {prog!r} (add one to tests/test_docs.py or EXTERNAL)")


# ------------------------------------------------------------------------------- the reward server for `curl`

class FakeServer:
    """The real reward-server app (routes, validation, batching) on a keyword judge; built on first use."""

    def __init__(self):
        self._client = None

    def client(self):
        if self._client is None:
            from fastapi.testclient import TestClient

            from lib.profiles import load_profile
            from lib.rubric import load_rubric
            from lib.serve.app import create_app
            from lib.serve.scorer import RewardScorer
            from tests.fakes import KeywordJudge

            profile = load_profile("smoke")
            scorer = RewardScorer(KeywordJudge(), load_rubric(profile.rubric.path), profile.train.reward_weights,
                                  {"profile": profile.name, "model": profile.judge.model, "backend": "fake"})
            self._scorer = scorer
            self._client = TestClient(create_app(scorer, token="s3cret"))
            self._client.__enter__()  # runs the app's lifespan (starts its batcher)
        return self._client

    def check(self, tokens, block, where):
        url = next(t for t in tokens if "localhost:" in t or "127.0.0.1:" in t)
        path = "/" + url.split("/", 1)[1] if "/" in url else "/"
        headers = {}
        for i, t in enumerate(tokens):
            if t == "-H":
                h = tokens[i + 1]
                h = "Authorization: Bearer s3cret" if h == "$T" else h
                k, v = h.split(":", 1)
                headers[k.strip()] = v.strip()
        body = tokens[tokens.index("-d") + 1] if "-d" in tokens else None
        c = self.client()
        r = c.post(path, content=body, headers=headers) if body is not None else c.get(path, headers=headers)
        assert r.status_code == 200, f"{where}: HTTP {r.status_code} {r.text[:300]}"
        documented = documented_answer(block.text, tokens)
        if documented and r.headers.get("content-type", "").startswith("application/json"):
            got = set(_keys(r.json()))
            missing = [k for k in re.findall(r'"([A-Za-z_][\w]*)":', documented) if k not in got]
            assert not missing, f"{where}: the documented answer's keys {missing} are not in the reply {r.text[:300]}"


def _keys(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _keys(v)


def documented_answer(text: str, tokens: list[str]) -> str:
    """The `# {...}` comment lines right after the curl line of these tokens (or on it)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("curl") and simple_commands(line) == [tokens]:
            same = line.split("#", 1)[1] if re.search(r"\s#\s*\{", line) else ""
            after = []
            for nxt in lines[i + 1:]:
                if not nxt.lstrip().startswith("#"):
                    break
                after.append(nxt.lstrip()[1:])
            return same + " ".join(after) if (same or (after and after[0].strip().startswith("{"))) else ""
    return ""


@pytest.fixture(scope="module")
def srv():
    server = FakeServer()
    yield server
    if server._client is not None:
        server._client.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------- python blocks

def _stub_judge(monkeypatch):
    """`build_judge` returns a keyword judge: the snippet's API is real, its 7B model is not loaded."""
    import lib.judge
    from tests.fakes import KeywordJudge

    monkeypatch.setattr(lib.judge, "build_judge", lambda *a, **k: KeywordJudge())


def run_rewards_elsewhere(block: Block, monkeypatch, capsys):
    _stub_judge(monkeypatch)
    ns: dict = {}
    exec(compile(block.text, block.where, "exec"), ns)
    scores, jr = ns["scores"], ns["jr"]
    assert isinstance(scores, list) and len(scores) == 1 and 0.0 <= scores[0] <= 1.0
    assert [f.__name__ for f in ns["reward_funcs"]] == ["format_reward", "think_quality_reward", "answer_quality_reward"]
    assert len(jr.details["answer"]) == 1 and jr.details["answer"][0]["score"] == pytest.approx(scores[0])
    assert jr.judge.calls, "the snippet's judge was never asked"


def run_trl_remote(block: Block, monkeypatch, capsys):
    """GRPOTrainer is replaced by a recorder that binds the snippet's arguments to the real signature (no model
    download, no training); GRPOConfig and RemoteRewards are real."""
    import inspect

    import trl

    real = trl.GRPOTrainer
    calls = []

    class Recorder:
        def __init__(self, *a, **k):
            inspect.signature(real.__init__).bind(self, *a, **k)
            calls.append(k)

        def train(self):
            calls.append("train")

    real_config = trl.GRPOConfig

    def cpu_config(**k):  # the real config; on a machine without CUDA, without bf16 (the snippet is for a GPU)
        import torch

        return real_config(**k) if torch.cuda.is_available() else real_config(**k, bf16=False, use_cpu=True)

    monkeypatch.setattr(trl, "GRPOTrainer", Recorder)
    monkeypatch.setattr(trl, "GRPOConfig", cpu_config)
    ns = {"train_ds": object()}
    exec(compile(block.text, block.where, "exec"), ns)
    funcs = calls[0]["reward_funcs"]
    assert [f.__name__ for f in funcs] and all(callable(f) for f in funcs) and calls[-1] == "train"


@pytest.mark.smoke
def test_rewards_snippet_on_a_real_judge(monkeypatch, smoke_judge_backend):
    """The README's snippet on a real engine: `build_judge` returns the `smoke` profile's judge (Gemma 3 270M, vLLM
    in-process; the engine the session shares, tests/conftest.py) in place of the snippet's 7B model. Slow (an
    engine start, unless another test has started it): marked `smoke`."""
    import lib.judge
    from lib.judge.engine import JudgeEngine
    from lib.profiles import load_profile

    block = next(b for b in PY_BLOCKS if b.kind == "rewards-elsewhere")

    def smoke_judge(cfg, **k):  # build_judge(profile.judge, seed=profile.seed), on the engine already started
        return JudgeEngine(smoke_judge_backend, load_profile("smoke").judge)

    monkeypatch.setattr(lib.judge, "build_judge", smoke_judge)
    ns: dict = {}
    exec(compile(block.text, block.where, "exec"), ns)
    assert len(ns["scores"]) == 1 and 0.0 <= ns["scores"][0] <= 1.0
    items = ns["jr"].details["answer"][0]["items"]
    assert items and all(0.0 <= v["p_yes"] <= 1.0 for v in items.values() if v["p_yes"] is not None)


def run_sweep_file(block, monkeypatch, capsys):
    """docs/experiments.md: the sweep file shown loads (lib.sweep validates it) and is the shipped example's definition."""
    from lib.sweep import load_sweep

    first = block.text.splitlines()[0]
    shipped = REPO_ROOT / first.lstrip("# ").strip()
    assert first.startswith("# lib/assets/sweeps/") and shipped.exists(), f"{block.where}: first line names no file in lib/assets/sweeps/"
    written = Path(os.environ.get("TMPDIR", "/tmp")) / f"docs-sweep-{os.getpid()}" / shipped.name
    written.parent.mkdir(exist_ok=True)
    written.write_text(block.text, encoding="utf-8")
    shown, real = load_sweep(written, "x"), load_sweep(shipped, "x")
    assert [(v.name, v.overrides) for v in shown.variants] == [(v.name, v.overrides) for v in real.variants], block.where


PYTHON_BLOCKS = {
    "sweep-file": run_sweep_file,  # experiments.md: a sweep definition, loaded by lib.sweep
    "rewards-elsewhere": run_rewards_elsewhere,  # README: lib.rewards with a judge; build_judge stubbed
    "trl-remote": run_trl_remote,  # reward-server.md: TRL with RemoteRewards; GRPOTrainer stubbed
}
KINDS = {"check", "output", *PYTHON_BLOCKS}


# ------------------------------------------------------------------------------------------------- the tests

def test_every_block_is_classified():
    bad = [f"{b.where}: ```{b.lang} {b.kind}" for b in ALL_BLOCKS
           if b.kind not in KINDS or (b.kind == "check") != (b.lang in SHELL_LANGS) and b.kind != "output"]
    assert not bad, ("fenced blocks need a check after the language (one of " + ", ".join(sorted(KINDS)) +
                     ", see tests/test_docs.py): " + "; ".join(bad))


def _ids(blocks):
    return [b.where for b in blocks]


CHECK_BLOCKS = [b for b in ALL_BLOCKS if b.kind == "check"]


@pytest.mark.parametrize("block", CHECK_BLOCKS, ids=_ids(CHECK_BLOCKS))
def test_shell_block_commands_are_valid(block, srv):
    text = block.text
    for name in PLACEHOLDERS:
        text = text.replace(name, "RUN-ID")
    r = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, f"{block.where}: bash -n: {r.stderr.strip()}"
    commands = [c for line in logical_lines(block.text) for c in simple_commands(line)]
    assert commands, f"{block.where}: no command in the block"
    for tokens in commands:
        check_command(tokens, block, srv)


OUTPUT_BLOCKS = [b for b in ALL_BLOCKS if b.kind == "output"]


@pytest.mark.parametrize("block", OUTPUT_BLOCKS, ids=_ids(OUTPUT_BLOCKS))
def test_output_block_is_still_printed(block):
    source = "\n".join(p.read_text(encoding="utf-8") for p in (REPO_ROOT / "lib").rglob("*.py"))
    for line in block.text.splitlines():
        label = line.split(":", 1)[0]
        assert re.search(r"""f?["']""" + re.escape(label) + ":", source), \
            f"{block.where}: no string in lib/ prints {label + ':'!r} any more"


PY_BLOCKS = [b for b in ALL_BLOCKS if b.kind in PYTHON_BLOCKS]


@pytest.mark.parametrize("block", PY_BLOCKS, ids=_ids(PY_BLOCKS))
def test_python_block_runs(block, monkeypatch, capsys):
    monkeypatch.setenv("CREATIVE_GRPO_REWARD_URL", "http://127.0.0.1:9")
    PYTHON_BLOCKS[block.kind](block, monkeypatch, capsys)


INLINE_PROGRAM = re.compile(r"^([A-Z_]+=\S+ )*((\.venv/bin/)?python3? -m \S|make \w|accelerate \w|bash \S|vllm \w|trl \w|pytest )")


def inline_commands(path: Path) -> list[tuple[str, str]]:
    """Commands written inline (`python -m lib.x …`, `make x`, `--set a.b=c …`) outside fenced blocks, as
    (original, runnable): a synopsis's `[optional]` brackets dropped (their content kept), ` ...` (repeatable)
    dropped, `a|b` → a, an
    upper-case metavar or `key.sub=value` → a placeholder."""
    text = re.sub(r"^(`{3,}).*?^\1", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    out = []
    for span in re.findall(r"`([^`\n]+)`", text):
        is_set = re.fullmatch(r"(--set \S+=\S+\s*)+", span)
        if not (INLINE_PROGRAM.match(span) or is_set):
            continue
        cmd = re.sub(r" \.\.\.(?=[\] ]|$)", "", span)  # `[--set k=v ...]`: repeatable
        cmd = re.sub(r"\[([^\[\]]*)\]", r"\1", cmd)
        cmd = re.sub(r"(\w+)\|[\w|]+", r"\1", cmd)
        cmd = re.sub(r"\bkey\.sub=value\b", PLACEHOLDER, cmd)
        cmd = re.sub(r"(?<![\w./=-])[A-Z][A-Z_]+(?![\w./=-])", PLACEHOLDER, cmd)
        out.append((span, "python -m lib.cli show-profile gpu " + cmd if is_set else cmd))
    return out


@pytest.mark.parametrize("path", DOCS, ids=[p.relative_to(REPO_ROOT).as_posix() for p in DOCS])
def test_inline_commands_are_valid(path, srv):
    block = Block(path, 0, "bash", "check", "")
    for span, cmd in inline_commands(path):
        for tokens in simple_commands(cmd):
            if tokens[:2] == ["pytest", "-m"]:
                markers = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
                assert f'"{tokens[2]}:' in markers, f"{path.name}: `{span}`: no pytest marker {tokens[2]!r}"
                continue
            if len(tokens) == 2 and tokens[0] in ("accelerate", *EXTERNAL):  # `vllm serve`: a program's name
                continue
            if len(tokens) == 3 and tokens[1] == "-m":  # `python -m lib.x` as the name of a command
                assert importlib.util.find_spec(tokens[2]), f"{path.name}: `{span}`: no module {tokens[2]}"
                continue
            try:
                check_command(tokens, block, srv)
            except AssertionError as e:
                if f"invalid choice: '{PLACEHOLDER}'" in str(e):  # a metavar where the parser has choices
                    continue
                raise AssertionError(f"{path.relative_to(REPO_ROOT)}: inline `{span}`: {e}") from None


def _defines(source: str, names: list[str]) -> bool:
    """Whether `source` defines names[0] at top level (and names[1] inside it, when it is a class)."""
    import ast

    tree = ast.parse(source)
    for node in tree.body:
        found = None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == names[0]:
            found = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == names[0] for t in targets):
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == names[0] for a in node.names):
                return True
        if found is not None:
            if len(names) == 1 or not isinstance(found, ast.ClassDef):
                return True
            return any(getattr(n, "name", None) == names[1] for n in found.body) or \
                any(isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == names[1] for n in found.body)
    return False


def resolve_dotted(name: str) -> str | None:
    """None if `lib.a.b.attr` names a module of lib/ or a name defined in one (read, not imported), else why not."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        base = REPO_ROOT.joinpath(*parts[:i])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            rest = parts[i:]
            if not rest or _defines(module.read_text(encoding="utf-8"), rest):
                return None
            return f"{module.relative_to(REPO_ROOT)} defines no {'.'.join(rest)}"
    return f"no module {name}"


def test_named_code_and_paths_exist():
    """`lib.x.name`, `lib/x.py`, `tests/test_x.py::test_y` written in the docs still exist."""
    problems = []
    for p in DOCS:
        text = p.read_text(encoding="utf-8")
        for span in set(re.findall(r"`([^`\n]+)`", text)):
            m = re.fullmatch(r"(lib(?:\.\w+)+)(\(.*\))?", span)
            if m:
                why = resolve_dotted(m.group(1))
                if why:
                    problems.append(f"{p.relative_to(REPO_ROOT)}: `{span}`: {why}")
                continue
            m = re.fullmatch(r"((?:lib|tests|docs|scripts|notebooks)/[\w./*-]*)(?:::(\w+))?", span)
            if not m or re.search(r"/[A-Z_]+\.", m.group(1)):  # `lib/assets/profiles/NAME.yaml`: a placeholder
                continue
            path = m.group(1)
            if not list(REPO_ROOT.glob(path)) and not (REPO_ROOT / path).exists():
                problems.append(f"{p.relative_to(REPO_ROOT)}: `{span}`: no {path}")
            elif m.group(2) and not _defines((REPO_ROOT / path).read_text(encoding="utf-8"), [m.group(2)]):
                problems.append(f"{p.relative_to(REPO_ROOT)}: `{span}`: {path} defines no {m.group(2)}")
    assert not problems, "the docs name code or files that are not there:\n" + "\n".join(problems)


def test_readme_is_short():
    n = len((REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= 200, f"README.md has {n} lines (at most 200: move a topic into docs/)"


def test_relative_links_resolve():
    missing = []
    for p in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", p.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            if not (p.parent / target.split("#")[0]).exists():
                missing.append(f"{p.relative_to(REPO_ROOT)}: {target}")
    assert not missing, f"links to nothing: {missing}"


# ------------------------------------------------------------------------------------------ the layout table

def layout_rows() -> dict[str, str]:
    text = (REPO_ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_layout_table_matches_the_tree():
    rows = layout_rows()
    lib = REPO_ROOT / "lib"
    problems = []
    # Every path of the table exists (outputs/ is generated).
    for path in rows:
        if path.startswith("outputs/"):
            continue
        if not (REPO_ROOT / path).exists() and not list(REPO_ROOT.glob(path)):
            problems.append(f"the table's `{path}` is not in the tree")
    # A folder row's file names exist in it; a `dir/*.ext` row names exactly the files the pattern matches.
    for path, cell in rows.items():
        if path.startswith("outputs/"):
            continue
        if "*" in path:
            named = set(re.findall(r"`([\w-]+)`", cell))
            on_disk = {p.name[: len(p.name) - len(path.split("*", 1)[1])] for p in REPO_ROOT.glob(path)}
            problems += [f"row `{path}` names `{n}`, but there is no {path.replace('*', n)}" for n in sorted(named - on_disk)]
            problems += [f"row `{path}` does not name `{n}` ({path.replace('*', n)} exists)" for n in sorted(on_disk - named)]
        elif path.endswith("/") and not (REPO_ROOT / path / "__init__.py").is_file():  # packages: below
            for name in re.findall(r"`([\w-]+\.\w+|[\w-]+/)`", cell):
                if not (REPO_ROOT / path / name).exists():
                    problems.append(f"row `{path}` names `{name}`, which is not in {path}")
    # Every module and folder named in a lib/ row exists; every one in the tree is named.
    packages = {p.parent for p in lib.rglob("__init__.py") if "__pycache__" not in p.parts}
    for pkg in sorted(packages):
        rel = pkg.relative_to(REPO_ROOT).as_posix() + "/"
        if rel not in rows:
            problems.append(f"the layout table has no row `{rel}` (package {rel} exists)")
            continue
        named = set(re.findall(r"`([\w.]+\.py|\w+/)`", rows[rel]))
        for name in sorted(named):
            if not (pkg / name.rstrip("/")).exists():
                problems.append(f"row `{rel}` names `{name}`, which is not in {rel}")
        for f in sorted(pkg.glob("*.py")):
            if f.name != "__init__.py" and f.name not in named:
                problems.append(f"row `{rel}` does not name `{f.name}` ({rel}{f.name} exists)")
    for d in sorted(x for x in lib.iterdir() if x.is_dir() and x.name != "__pycache__" and x not in packages):
        rel = d.relative_to(REPO_ROOT).as_posix() + "/"
        if not any(r.startswith(rel) for r in rows):
            problems.append(f"the layout table has no row for the folder `{rel}`")
    assert not problems, "docs/layout.md vs tree:\n" + "\n".join(problems)
