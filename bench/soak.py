"""`python -m bench soak`: the reward server under load, fuzzing and faults, for minutes.

Mixed load, fuzzed bodies, killed clients and an injected judge failure; says whether anything was lost, answered wrongly or leaked.

    python -m bench soak [--seconds 300] [--clients 24] [--profile smoke] [--judge module:factory]
                             [--bad-bodies 1200] [--rss-growth-mib 512] [--json PATH]

The server runs in its own process (`python -m bench.soak_server`, uvicorn on 127.0.0.1, a bearer token,
the default `Limits`), on the profile's judge (default `smoke`: the real Gemma 3 270M, loaded once) or on a judge
built by `--judge module:factory` (a test double: the suite's short run). The judge is wrapped so that judging
the entity `INJECTED_ENTITY` raises: the injected failure. For `--seconds`, from this process:

- 2/3 of `--clients` (threads, one keep-alive connection each) send valid requests back to back: every endpoint,
  format-only, judged, with details, TRL's message form, Unicode edge cases (emoji, ZWJ, RTL, combining marks,
  NUL) as completions; each must get a 200 of the right shape;
- 1/3 send bad requests: `--bad-bodies` distinct bodies from `bench.fuzz` (hypothesis, the real schemas),
  cycled, plus a wrong Content-Type, no/wrong token, an unknown path, a wrong method, a body over the byte limit;
  each must get a 4xx with a one-line `{"error"}`, JSON, `nosniff`;
- every `--kill-every` seconds a client dies mid-request: a connection reset after a full or half-sent judged
  body, or a client process SIGKILLed while its request is judged;
- every `--inject-every` seconds a request for the injected entity: it must get a 500, and no other request may.

Then a last valid request and /health (queue empty). Reported: requests sent, answered, lost (no answer, not
killed: must be 0), 5xx other than the injected ones (must be 0), bad bodies not answered with a one-line 4xx
(must be 0), p50/p99 latency of valid requests (all, and judged), the server's RSS at start (ready, warmed up),
at each tenth of the run and at the end, and whether its growth stays under `--rss-growth-mib` (512 MiB:
the smoke judge's process holds ~6 GiB, and new batch shapes allocate early) and under a quarter of that in the
run's second half (a leak keeps growing). Exit code 1
when a check fails. JSON to `--json` (never overwritten; default outputs/bench/soak-<timestamp>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.soak_server import INJECTED_ENTITY, TOKEN

UNICODE_EDGE = ("椰子水😀👩‍👩‍👧，一口清凉。", "مرحبا 椰子水 שלום", "e\u0301\u0301\u0301椰子水", "椰子\x00水", "\u200b\u200d\ufeff椰子水",
                "𠀀𪚥𝒜", "Ａｄ　全角", "<script>alert(1)</script>&amp;")


# ------------------------------------------------------------------------------------------------ the clients


class Record:
    """What every request got, appended by the client threads (list.append is atomic)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.examples: dict[str, list[str]] = {}

    def add(self, **row) -> None:
        self.rows.append(row)

    def example(self, what: str, text: str) -> None:
        self.examples.setdefault(what, [])
        if len(self.examples[what]) < 5:
            self.examples[what].append(text[:300])


def valid_requests(n: int) -> list[tuple[str, dict, int, bool]]:
    """(endpoint, body, completions, judged) of `n` distinct valid requests of every kind."""
    from bench.serve import workload

    comps, ents = workload(n)
    out = []
    for i, (c, e) in enumerate(zip(comps, ents)):
        think, answer = c.split("</think>")[0].removeprefix("<think>"), c.split("<answer>")[-1].removesuffix("</answer>")
        k = i % 8
        if k == 0:
            out.append(("/rewards", {"completions": [c, c + "。"], "entity": e, "rewards": ["format"]}, 2, False))
        elif k == 1:
            out.append(("/rewards", {"completions": [c], "entity": [e], "rewards": ["answer"]}, 1, True))
        elif k == 2:
            out.append(("/rewards", {"completions": [c], "entity": e, "details": True}, 1, True))
        elif k == 3:
            out.append(("/get_answer_quality_reward", {"entities": [e], "completions": [answer]}, 1, True))
        elif k == 4:
            out.append(("/get_think_quality_reward", {"entities": [e], "completions": [think]}, 1, True))
        elif k == 5:
            out.append(("/get_reward", {"query": [f"<start_of_turn>user\n为{e}写一条广告<end_of_turn>\n<start_of_turn>model\n{c}<end_of_turn>"],
                                        "labels": [e]}, 1, True))
        elif k == 6:
            u = UNICODE_EDGE[(i // 8) % len(UNICODE_EDGE)]
            out.append(("/rewards", {"completions": [f"<think>{think}{u}</think><answer>{u}{answer}</answer>"],
                                     "entity": [u if u.strip() else e], "rewards": ["format", "answer"]}, 1, True))
        else:
            out.append(("/rewards", {"completions": [[{"role": "assistant", "content": c}], c],
                                     "entity": [e, e], "rewards": ["format", "tag_count"], "prompts": [[1], [1]]}, 2, False))
    return out


def rss_bytes(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def _check_valid(ep: str, ans, n: int) -> str | None:
    """Why a valid request's answer is wrong, or None."""
    if ans.status_code != 200:
        return f"HTTP {ans.status_code}: {ans.text[:200]}"
    got = ans.json()
    if ep == "/rewards":
        ok = all(len(v) == n and all(0.0 <= x <= 1.0 for x in v) for v in got["rewards"].values()) and len(got["total"]) == n
    else:
        ok = len(got["rewards"]) == n
    return None if ok else f"wrong shape: {ans.text[:200]}"


def _check_bad(ans) -> str | None:
    """Why a bad request's answer is not a JSON one-line 4xx with nosniff, or None."""
    if not 400 <= ans.status_code < 500:
        return f"HTTP {ans.status_code}: {ans.text[:200]}"
    if not ans.headers.get("content-type", "").startswith("application/json") or ans.headers.get("x-content-type-options") != "nosniff":
        return f"headers {dict(ans.headers)}"
    try:
        err = ans.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"not an error object: {ans.text[:200]}"
    if not isinstance(err, str) or "\n" in err or not err.strip():
        return f"not one line: {err!r}"
    if "<" in ans.text or ">" in ans.text:
        return f"unescaped markup: {ans.text[:200]}"
    return None


def _raw(port: int, head: bytes, body: bytes, read: bool, linger_rst: bool, delay: float = 0.0) -> bytes:
    """Send `head` + `body` on a fresh socket; return what came back (read=True) or reset the connection."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(head + body)
        if read:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data
        time.sleep(delay)
        return b""
    finally:
        if linger_rst:  # close with RST, as the kernel does for a killed process with unread data
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()


def _head(ep: str, length: int, token: str = TOKEN) -> bytes:
    return (f"POST {ep} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def soak(seconds: float = 300.0, clients: int = 24, profile: str = "smoke", judge: str | None = None,
         n_bad: int = 1200, kill_every: float = 5.0, inject_every: float = 15.0, fuzz_pause: float = 0.05,
         rss_growth_mib: float = 512.0, json_path: Path | None = None, seed: int = 0,
         startup_timeout: float = 900.0) -> dict[str, Any]:
    """Run the soak (see the module docstring); the report (also written to `json_path` when given)."""
    import httpx

    from lib import paths
    from bench.common import BenchError, free_port, machine_info, stop_server, versions, wait_for_health, write_json
    from lib.serve.scorer import Limits

    if seconds <= 0 or clients < 3:
        raise BenchError("--seconds must be positive and --clients at least 3 (valid, bad and killed clients)")
    if json_path is not None and json_path.exists():
        raise BenchError(f"{json_path} exists; benchmarks never overwrite (choose another --json)")
    try:
        from bench.fuzz import bad_bodies
    except ImportError as exc:
        raise BenchError(f"the soak needs hypothesis ({exc}); install the dev extra: pip install -e '.[dev]'") from None
    limits = Limits()
    t0 = time.perf_counter()
    bodies = bad_bodies(n_bad, limits, seed=seed)
    gen_s = time.perf_counter() - t0
    valid = valid_requests(400)
    rng = random.Random(seed)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(paths.PROJ_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    cmd = [sys.executable, "-m", "bench.soak_server", "--port", str(port), "--profile", profile] + (["--judge", judge] if judge else [])
    proc = subprocess.Popen(cmd, cwd=paths.PROJ_ROOT, env=env, start_new_session=True)
    rec = Record()
    rss: list[tuple[float, int]] = []
    try:
        startup_s = wait_for_health(url + "/health", proc, startup_timeout)
        rss_start = rss_bytes(proc.pid)
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        stop = threading.Event()
        deadline = time.perf_counter() + seconds
        counters = {"valid": 0, "bad": 0}
        lock = threading.Lock()

        def take(kind: str, size: int) -> int:
            with lock:
                i = counters[kind]
                counters[kind] += 1
                return i % size

        def send(client, kind: str, method: str, ep: str, content: bytes | None, headers: dict, **extra):
            t = time.perf_counter()
            try:
                ans = client.request(method, url + ep, content=content, headers=headers)
            except httpx.HTTPError as exc:
                rec.add(kind=kind, ep=ep, status=None, seconds=time.perf_counter() - t, **extra)
                rec.example("lost", f"{kind} {ep}: {type(exc).__name__}: {exc}")
                return None
            rec.add(kind=kind, ep=ep, status=ans.status_code, seconds=time.perf_counter() - t, **extra)
            return ans

        def valid_client() -> None:
            with httpx.Client(timeout=900.0) as client:
                while time.perf_counter() < deadline:
                    ep, body, n, judged = valid[take("valid", len(valid))]
                    ans = send(client, "valid", "POST", ep, json.dumps(body, ensure_ascii=False).encode(), auth, judged=judged)
                    why = None if ans is None else _check_valid(ep, ans, n)
                    if why:
                        rec.add(kind="wrong", ep=ep, status=ans.status_code)
                        rec.example("valid answered wrongly", f"{ep}: {why}")

        extras = [  # bad requests that are not about the body
            ("POST", "/rewards", {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}, "content_type"),
            ("POST", "/rewards", {"Authorization": f"Bearer {TOKEN}"}, "content_type"),
            ("POST", "/rewards", {"Content-Type": "application/json"}, "no_token"),
            ("POST", "/rewards", {"Authorization": "Bearer " + "x" * 64, "Content-Type": "application/json"}, "wrong_token"),
            ("GET", "/rewards", {"Authorization": f"Bearer {TOKEN}"}, "method"),
            ("POST", "/<script>alert(1)</script>", auth, "path"),
        ]

        def bad_client() -> None:
            with httpx.Client(timeout=120.0) as client:
                while time.perf_counter() < deadline:
                    i = take("bad", len(bodies) + len(extras) + 1)
                    if i < len(bodies):
                        b = bodies[i]
                        ans = send(client, "bad", "POST", b.endpoint, b.body, auth, bad=b.kind, body_id=i)
                    elif i < len(bodies) + len(extras):
                        method, ep, headers, what = extras[i - len(bodies)]
                        ans = send(client, "bad", method, ep, b'{"completions": ["a"], "entity": "x"}', headers, bad=what)
                    else:  # over the byte limit: the server answers after the headers; this client reads the answer
                        t = time.perf_counter()
                        head = _raw(port, _head("/rewards", limits.max_body_bytes + 1), b"[" * 65536, read=True, linger_rst=False)
                        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
                        rec.add(kind="bad", ep="/rewards", status=status, seconds=time.perf_counter() - t, bad="body_bytes")
                        if status != 413:
                            rec.add(kind="wrong", ep="/rewards", status=status)
                            rec.example("bad answered wrongly", f"body over the limit: {head[:200]!r}")
                        continue
                    why = None if ans is None else _check_bad(ans)
                    if why:
                        rec.add(kind="wrong", ep=ans.request.url.path, status=ans.status_code)
                        rec.example("bad answered wrongly", f"{why} for {(b.body if i < len(bodies) else ep)[:150]!r}")
                    time.sleep(fuzz_pause)

        judged_requests = [v for v in valid if v[3]]

        def killer() -> None:
            n = 0
            while not stop.wait(kill_every):
                ep, body, _, _ = judged_requests[rng.randrange(len(judged_requests))]
                raw = json.dumps(body, ensure_ascii=False).encode()
                how = ("reset_after_body", "reset_mid_body", "sigkill")[n % 3]
                n += 1
                try:
                    if how == "reset_after_body":
                        _raw(port, _head(ep, len(raw)), raw, read=False, linger_rst=True, delay=rng.uniform(0.05, 1.5))
                    elif how == "reset_mid_body":
                        _raw(port, _head(ep, len(raw)), raw[: len(raw) // 2], read=False, linger_rst=True, delay=rng.uniform(0, 0.5))
                    else:
                        code = (f"import socket, time\ns = socket.create_connection(('127.0.0.1', {port}))\n"
                                f"s.sendall({_head(ep, len(raw)) + raw!r})\ntime.sleep(600)\n")
                        client = subprocess.Popen([sys.executable, "-c", code])
                        time.sleep(rng.uniform(0.3, 1.5))
                        client.send_signal(signal.SIGKILL)
                        client.wait(10)
                    rec.add(kind="killed", ep=ep, status=None, how=how)
                except OSError as exc:
                    rec.add(kind="killed", ep=ep, status=None, how=how, error=str(exc))

        def injector() -> None:
            body = json.dumps({"completions": [valid[1][1]["completions"][0]], "entity": [INJECTED_ENTITY], "rewards": ["answer"]},
                              ensure_ascii=False).encode()
            with httpx.Client(timeout=900.0) as client:
                while not stop.wait(inject_every):
                    ans = send(client, "injected", "POST", "/rewards", body, auth)
                    if ans is not None and not (ans.status_code == 500 and "injected failure" in ans.json().get("error", "")):
                        rec.add(kind="wrong", ep="/rewards", status=ans.status_code)
                        rec.example("injected answered wrongly", ans.text[:200])

        def sampler() -> None:
            while not stop.wait(max(seconds / 10, 0.5)):
                rss.append((round(time.perf_counter() - load_t0, 1), rss_bytes(proc.pid)))

        n_bad_clients = max(clients // 3, 1)
        threads = ([threading.Thread(target=valid_client, name=f"valid-{i}") for i in range(clients - n_bad_clients)]
                   + [threading.Thread(target=bad_client, name=f"bad-{i}") for i in range(n_bad_clients)])
        helpers = [threading.Thread(target=f, name=f.__name__) for f in (killer, injector, sampler)]
        print(f"[soak] server ready in {startup_s:.0f} s (RSS {rss_start / 2**20:.0f} MiB); {clients} clients for {seconds:.0f} s, "
              f"{len(bodies)} distinct bad bodies ...", flush=True)
        load_t0 = time.perf_counter()
        for t in threads + helpers:
            t.start()
        time.sleep(max(deadline - time.perf_counter(), 0))
        stop.set()
        for t in helpers:
            t.join(60)
        for t in threads:  # each finishes its request under way (judged ones may wait for the queue)
            t.join(900)
        stuck = [t.name for t in threads if t.is_alive()]
        load_s = time.perf_counter() - load_t0
        with httpx.Client(timeout=900.0) as client:  # still serving, nothing left in the queue
            last = client.post(url + "/rewards", content=json.dumps(valid[1][1], ensure_ascii=False).encode(), headers=auth)
            time.sleep(1.0)
            health = client.get(url + "/health").json()
        rss_end = rss_bytes(proc.pid)
    finally:
        stop_server(proc)
    rep = report(rec, bodies, rss_start, rss_end, rss, rss_growth_mib, last.status_code, health, stuck, load_s)
    rep.update({"benchmark": "soak", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": seconds, "load_seconds": round(load_s, 1), "clients": clients, "bad_clients": n_bad_clients,
                "profile": profile, "judge": judge or f"{profile} profile's judge (real model)", "kill_every_s": kill_every,
                "inject_every_s": inject_every, "fuzz_pause_s": fuzz_pause, "startup_s": round(startup_s, 1),
                "bad_bodies_generated_s": round(gen_s, 1), "limits": limits.__dict__, "machine": machine_info(),
                "versions": versions(), "load_avg_1m_end": round(os.getloadavg()[0], 2)})
    if json_path is not None:
        write_json(rep, json_path)
    return rep


def _pct(values: list[float], q: float) -> float | None:
    from lib.serve.prometheus import percentile

    return round(percentile(sorted(values), q), 3) if values else None


def report(rec: Record, bodies, rss_start: int, rss_end: int, rss: list, bound_mib: float, last_status: int,
           health: dict, stuck: list[str], load_s: float) -> dict[str, Any]:
    rows = rec.rows
    sent = [r for r in rows if r["kind"] in ("valid", "bad", "injected")]
    answered = [r for r in sent if r["status"] is not None]
    valid = [r for r in sent if r["kind"] == "valid" and r["status"] is not None]
    five = [r for r in answered if r["status"] >= 500 and r["kind"] != "injected"]
    injected = [r for r in answered if r["kind"] == "injected"]
    bad = [r for r in sent if r["kind"] == "bad"]
    wrong = Counter(r["ep"] for r in rows if r["kind"] == "wrong")
    distinct_ok = {r["body_id"] for r in bad if "body_id" in r and r["status"] is not None and 400 <= r["status"] < 500}
    growth = (rss_end - rss_start) / 2**20
    # a leak grows for as long as the load lasts; first-time allocations (new batch shapes, the allocator's pools)
    # come early: the second half of the run is held to a tighter bound than the whole
    half = [b for t, b in rss if t >= load_s / 2]
    late = (rss_end - half[0]) / 2**20 if half else growth
    checks = {
        "lost_is_0": len(sent) - len(answered) == 0 and not stuck,
        "other_5xx_is_0": not five,
        "every_bad_body_4xx_one_line": not wrong and len(distinct_ok) == len(bodies),
        "injected_failures_answered_500": bool(injected) and all(r["status"] == 500 for r in injected),
        "still_serving_after": last_status == 200 and health.get("queue_depth") == 0 and health.get("judging") == 0,
        f"rss_growth_under_{bound_mib:g}_mib": growth < bound_mib,
        f"rss_growth_in_second_half_under_{bound_mib / 4:g}_mib": late < bound_mib / 4,
    }
    return {
        "passed": all(checks.values()), "checks": checks,
        "requests_sent": len(sent), "answered": len(answered), "lost": len(sent) - len(answered), "stuck_clients": stuck,
        "valid": len([r for r in sent if r["kind"] == "valid"]), "valid_judged": sum(1 for r in valid if r.get("judged")),
        "bad": len(bad), "bad_distinct_bodies": len(bodies), "bad_distinct_answered_4xx": len(distinct_ok),
        "bad_by_kind": dict(Counter(r["bad"] for r in bad)), "injected": len(injected),
        "killed_clients": dict(Counter(r["how"] for r in rows if r["kind"] == "killed")),
        "status": {k: dict(Counter(str(r["status"]) for r in sent if r["kind"] == k)) for k in ("valid", "bad", "injected")},
        "other_5xx": len(five), "answered_wrongly": dict(wrong), "examples": rec.examples,
        "latency_s": {"valid_p50": _pct([r["seconds"] for r in valid], 0.5), "valid_p99": _pct([r["seconds"] for r in valid], 0.99),
                      "judged_p50": _pct([r["seconds"] for r in valid if r.get("judged")], 0.5),
                      "judged_p99": _pct([r["seconds"] for r in valid if r.get("judged")], 0.99),
                      "bad_p50": _pct([r["seconds"] for r in bad if r["status"]], 0.5),
                      "bad_p99": _pct([r["seconds"] for r in bad if r["status"]], 0.99)},
        "rss_mib": {"start": round(rss_start / 2**20, 1), "end": round(rss_end / 2**20, 1), "growth": round(growth, 1),
                    "growth_second_half": round(late, 1), "bound": bound_mib, "bound_second_half": bound_mib / 4, "samples": [(t, round(b / 2**20, 1)) for t, b in rss]},
        "health_after": {k: health.get(k) for k in ("queue_depth", "judging", "batches", "judgements")},
    }


def format_lines(rep: dict[str, Any]) -> list[str]:
    lat, rss = rep["latency_s"], rep["rss_mib"]
    return [
        f"soak: {rep['seconds']:.0f} s, {rep['clients']} clients, judge {rep['judge']}, "
        f"{rep['machine']['nproc']} x {rep['machine']['cpu_model']}: {'PASSED' if rep['passed'] else 'FAILED'}",
        f"  requests sent {rep['requests_sent']}, answered {rep['answered']}, lost {rep['lost']}; valid {rep['valid']} "
        f"(judged {rep['valid_judged']}), bad {rep['bad']} ({rep['bad_distinct_answered_4xx']}/{rep['bad_distinct_bodies']} "
        f"distinct bodies answered 4xx), injected {rep['injected']}, killed clients {sum(rep['killed_clients'].values())}",
        f"  5xx other than injected: {rep['other_5xx']}; answered wrongly: {rep['answered_wrongly'] or 0}",
        f"  latency valid p50 {lat['valid_p50']} s, p99 {lat['valid_p99']} s; judged p50 {lat['judged_p50']} s, p99 {lat['judged_p99']} s",
        f"  server RSS {rss['start']} MiB at start, {rss['end']} MiB at end (growth {rss['growth']} MiB, bound {rss['bound']:g}; "
        f"{rss['growth_second_half']} MiB in the second half, bound {rss['bound_second_half']:g})",
        "  checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in rep["checks"].items()),
    ]


def add_soak_parser(sub) -> None:
    """The `soak` subcommand of `python -m bench` (dispatched by bench.main)."""
    p = sub.add_parser("soak", help="reward server: minutes of mixed, fuzzed and killed clients and an injected judge failure")
    p.add_argument("--seconds", type=float, default=300.0, help="how long the load lasts (default 300)")
    p.add_argument("--clients", type=int, default=24, help="concurrent clients, 1/3 of them sending bad requests (default 24)")
    p.add_argument("--profile", default="smoke", help="profile whose judge is served (default smoke: Gemma 3 270M)")
    p.add_argument("--judge", default=None, help="module:factory building the judge instead (a test double)")
    p.add_argument("--bad-bodies", type=int, default=1200, help="distinct fuzzed bad bodies (default 1200)")
    p.add_argument("--kill-every", type=float, default=5.0, help="seconds between killed clients (default 5)")
    p.add_argument("--inject-every", type=float, default=15.0, help="seconds between injected judge failures (default 15)")
    p.add_argument("--rss-growth-mib", type=float, default=512.0,
                   help="the server's allowed RSS growth over the run (default 512 MiB; a quarter of it in the second half)")
    p.add_argument("--json", type=Path, help="report path (default outputs/bench/soak-<timestamp>.json)")
    p.set_defaults(run=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    from bench.common import BenchError, default_json_path

    try:
        rep = soak(args.seconds, args.clients, args.profile, args.judge, args.bad_bodies, args.kill_every, args.inject_every,
                   rss_growth_mib=args.rss_growth_mib, json_path=args.json or default_json_path(stem="soak"))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(format_lines(rep)))
    return 0 if rep["passed"] else 1
