"""jacdc beside its two peers, the original ACDC implementation (ArthurConmy/Automatic-Circuit-
Discovery at bc99ace8) and auto-circuit 1.0.1, on the same inputs on this machine. Writes
`benchmarks/results/peers.json`.

The peers are never vendored: `../shared/reference/peers.md` says how to build both (outside the
repository); this script takes their paths as options and skips a peer's rows when its option is
absent. auto-circuit's side runs `benchmarks/peers_autocircuit.py` with auto-circuit's Python;
the original's runs its own unmodified `acdc/main.py`, and, for row (d), a driver (`ORIG_EDGE`
below) that imports its `TLACDCExperiment`. Peers run with one torch thread, as peers.md's
figures were; jacdc with XLA's default threads (`--pin-one-core` puts every timed process on
core 0 with `taskset`). Every contestant runs in fresh processes timed from outside
(interpreter start-up, imports, tracr compilation, XLA compilation and the work all count) unless
a row says otherwise; repetitions are interleaved (rep 1 of every contestant, then rep 2, ...)
and medians of `--reps` are reported beside every raw time.

Rows (`--only a,b,c,d`):

- (a) **the paper's tracr sweep as CLI processes**: the 21 thresholds 10^linspace(-5, -1, 21)
    (jacdc's `--paper-thresholds`) x {corrupted, zero} ablation x {tracr-reverse,
    tracr-proportion}, metric `l2` (the metric of both tracr tasks in the paper).
    - jacdc: 4 `jacdc sweep` processes, **cold** (an empty `JACDC_CACHE_DIR` before the first of
        the 4; the other 3 then find what it cached) and **warm** (a cache filled once, untimed).
    - the original: one `acdc/main.py` process per run, 84 processes (`--zero-ablation` for
        zero). `--original-sample K` times only K of them per repetition (stratified over the 4
        task x ablation groups, other thresholds each repetition) and extrapolates: each group's
        mean x 21; the measured per-process times and the extrapolation are both reported.
    - auto-circuit: its ACDC over the 21 thresholds, one process per task. **It has no
        zero-ablation ACDC** (peers.md: zero ablation for EAP only; its ACDC always
        resample-ablates), so it covers the 42 corrupted runs only; compare it with jacdc's two
        corrupted processes (reported apart) as well as with all 4. Per-run (per-threshold)
        times from inside its process are reported too.
- (b) **the same runs in one process**: jacdc through the Python API (`jacdc.acdc_sweep`, the
    84 runs; cold and warm cache); auto-circuit's 42 runs in one process. The original has no
    in-process sweep (its `main.py` is one run per process): its row (a) figure stands.
- (c) **the first result**: `jacdc discover tracr-reverse --threshold 0.01 --metric l2` (cold and
    warm) vs one original process (`main.py --task tracr-reverse --threshold 0.01 --metric l2`)
    vs one auto-circuit process at the single threshold 0.01.
- (d) **time per edge test** on a random 2-layer x 8-head attention-only model (d_model 256,
    d_head 32, vocabulary 50,259, n_ctx 300, LayerNorm, shortformer positions: redwood_attn_2l's
    shape), initialised by TransformerLens 1.6.1 (`HookedTransformer`, `seed=--edge-seed`) in the
    original's environment and saved as a state dict that every contestant loads (jacdc via
    `jacdc.models.from_transformer_lens_state_dict`). 10 prompts x 300 random tokens, corrupted =
    another random draw (`.npy` files in a temp folder), KL(model || circuit) averaged over every
    position, corrupted ablation, threshold `--edge-tau` (default `EDGE_TAU`; `auto` calibrates
    it as `benchmarks/floor.py` does). Each contestant runs the first `--edge-tests` (17: the
    first receiver, resid_post) edge tests of ACDC's order; seconds per edge test = wall of those
    tests / tests, set-up left out and reported apart:
    - the original: `TLACDCExperiment.step()` until that many edges are tested (whole steps, so
        it can overshoot; the graph rendering inside `step()` included); every metric forward is
        timed too (`edge_test_pass_median_s`: one edge test's forward + metric alone);
    - jacdc's fast and reference engines (`jacdc.acdc(..., max_tests=K)`), warm: after an untimed
        run of `--edge-warmup` tests in the same process that compiles what the timed run needs
        (its JAX compile + trace seconds are the reported compile time; the timed run's own
        compile count is recorded and should be 0). The run's wall includes its initial
        corrupted and clean passes; the fast engine's device calls alone are reported too;
    - auto-circuit: its ACDC on the same weights, limited to the first K edges of its own order
        (by receiver layer, latest first: the same receiver first), from its first edge test on.

Usage:
`python benchmarks/peers.py --original ORIG --original-python ORIG_VENV/bin/python
--auto-circuit-python AC_VENV/bin/python [--reps 3] [--only a,b,c,d] [--original-sample K]
[--edge-tests 17] [--edge-reps N] [--out F] [--quick]`. `--quick` is a smoke test: 3
thresholds, 1 repetition, 4 original processes in (a).
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np


HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "peers.json"
sys.path.insert(0, str(HERE))
import _results  # noqa: E402
import startup  # noqa: E402  (its CLI runner)


PAPER_TAUS = [float(t) for t in 10.0 ** np.linspace(-5, -1, 21)]
TASKS = ("tracr-reverse", "tracr-proportion")
AC_TASK = {"tracr-reverse": "reverse", "tracr-proportion": "xproportion"}
ABLATIONS = ("corrupted", "zero")
TIMEOUT_S = 3600

# The model of row (d), as TransformerLens config arguments (both TL versions take them).
EDGE_MODEL = dict(n_layers=2, d_model=256, d_head=32, n_heads=8, d_vocab=50259, n_ctx=300,
                  attn_only=True, normalization_type="LN",
                  positional_embedding_type="shortformer")  # fmt: skip
EDGE_BATCH, EDGE_SEQ = 10, 300
# Row (d)'s threshold: `--edge-tau auto` for --edge-seed 0 (TL 1.6.1's weights) gave 0.00348
# (90% of the first 17 single-edge effects of a tau = 1e9 probe above it, as floor.py): fixed here
# to save the probe's 17 full forwards.
EDGE_TAU = 0.0035

# A `jacdc` command line in this process, then JAX's work as one JSON line.
JACDC_CLI = startup.CLI

# Row (b): the 84 runs through the Python API, one process (as startup.py's sweep84).
JACDC_SWEEP_API = textwrap.dedent(
    """
    import time
    T0 = time.perf_counter()
    import json, sys
    from jacdc import engine
    stats = engine.compile_stats()
    import jacdc
    from jacdc import tasks
    taus, positions = json.loads(sys.argv[1]), sys.argv[2]
    out = {"imports_s": time.perf_counter() - T0, "sweeps": {}}
    for name in ("tracr-reverse", "tracr-proportion"):
        t = time.perf_counter()
        bundle = tasks.load_task(name, positions=positions)
        out["load_" + name + "_s"] = time.perf_counter() - t
        for zero in (False, True):
            t = time.perf_counter()
            rs = jacdc.acdc_sweep(bundle.model, bundle.val, taus, metric="l2", zero_ablation=zero)
            out["sweeps"][f"{name}/{'zero' if zero else 'corrupted'}"] = {
                "wall_s": time.perf_counter() - t, "edges": [r.n_edges for r in rs],
                "edge_tests": sum(r.n_tests for r in rs)}
    out["wall_in_process_s"] = time.perf_counter() - T0
    out["jax"] = stats.as_dict()
    print("RESULT " + json.dumps(out))
    """
)

# Row (d), jacdc's side: `calibrate DIR K` prints tau; `run DIR TAU K ENGINES W` times each
# engine's first K edge tests, after an untimed run of W tests that compiles what they need.
JACDC_EDGE = textwrap.dedent(
    """
    import time
    T0 = time.perf_counter()
    import json, sys
    from pathlib import Path
    import numpy as np
    import jax.numpy as jnp
    from jacdc import engine
    stats = engine.compile_stats()
    import jacdc
    from jacdc.models import from_transformer_lens_state_dict, transformer_lens_config
    from jacdc.tasks import Task, kl_metric
    mode, d = sys.argv[1], Path(sys.argv[2])
    cfg = transformer_lens_config(json.loads((d / "config.json").read_text()))
    with np.load(d / "weights.npz") as f:
        model = from_transformer_lens_state_dict({k: f[k] for k in f.files}, cfg)
    clean = jnp.asarray(np.load(d / "clean.npy"), jnp.int32)
    corrupt = jnp.asarray(np.load(d / "corrupt.npy"), jnp.int32)
    pos = jnp.arange(clean.shape[1])
    task = Task(clean=clean, corrupted=corrupt, corrupted_positions=None, logit_positions=pos,
                metrics={"kl_div": kl_metric(model, clean, pos)})
    setup_s = time.perf_counter() - T0
    if mode == "calibrate":
        probe = jacdc.acdc(model, task, 1e9, metric="kl_div", max_tests=int(sys.argv[3]))
        deltas = np.array([r["delta"] for r in probe.log if not r["skipped"]])
        print("RESULT " + json.dumps({"tau": float(np.quantile(deltas, 0.1)),
                                      "probe_tests": int(deltas.size)}))
        sys.exit(0)
    tau, k, warmup = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6])
    out = {"setup_s": setup_s, "graph_edges": len(jacdc.graph_of(model.graph_shape))}

    def timed(name, n, calls):
        before = stats.as_dict()
        kw = {"on_call": lambda *c: calls.append(c)} if name == "fast" else {}
        t = time.perf_counter()
        r = jacdc.acdc(model, task, tau, metric="kl_div", engine=name, max_tests=n, **kw)
        wall = time.perf_counter() - t
        after = stats.as_dict()
        return r, wall, {k: after[k] - before[k] for k in after}

    for name in sys.argv[5].split(","):
        _, w_wall, w_jax = timed(name, warmup, [])  # compiles what the timed run needs
        calls = []
        r, wall, jax_d = timed(name, k, calls)
        out[name] = {"warmup_tests": warmup, "warmup_s": w_wall, "warmup_jax": w_jax,
                     "compile_s": w_jax["compile_s"] + w_jax["trace_s"],
                     "timed_s": wall, "timed_jax": jax_d, "edge_tests": r.n_tests,
                     "s_per_edge_test": wall / r.n_tests,
                     "forward_evaluations": r.n_forward, "device_calls": r.n_calls,
                     "removed": sum(1 for x in r.log if not x["skipped"] and x["removed"])}
        if calls:  # device calls only, less the first (the initial metric)
            out[name]["calls_s"] = sum(c[1] for c in calls[1:])
            out[name]["calls_s_per_edge_test"] = out[name]["calls_s"] / r.n_tests
    out["jax"] = stats.as_dict()
    print("RESULT " + json.dumps(out))
    """
)

# Row (d), the original's side (its Python, PYTHONPATH=ORIG). `make DIR SEED`: a random TL 1.6.1
# model, saved as weights.pt (torch) and weights.npz (for jacdc). `run DIR TAU K`: ACDC steps on
# it until K edges are tested.
ORIG_EDGE = textwrap.dedent(
    """
    import time
    T0 = time.perf_counter()
    import json, os, statistics, sys
    from functools import partial
    import numpy as np
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    torch.autograd.set_grad_enabled(False)
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    mode, d = sys.argv[1], sys.argv[2]
    cfg_args = json.load(open(os.path.join(d, "config.json")))
    extra = dict(use_attn_result=True, use_split_qkv_input=True, device="cpu")
    if mode == "make":
        model = HookedTransformer(HookedTransformerConfig(**cfg_args, seed=int(sys.argv[3]),
                                                          **extra))
        sd = model.state_dict()
        torch.save(sd, os.path.join(d, "weights.pt"))
        np.savez(os.path.join(d, "weights.npz"), **{k: v.numpy() for k, v in sd.items()})
        print("RESULT " + json.dumps({"tensors": len(sd)}))
        sys.exit(0)
    tau, max_tests = float(sys.argv[3]), int(sys.argv[4])
    from acdc.TLACDCExperiment import TLACDCExperiment
    from acdc.TLACDCEdge import EdgeType
    from acdc.acdc_utils import kl_divergence
    imports_s = time.perf_counter() - T0
    model = HookedTransformer(HookedTransformerConfig(**cfg_args, **extra))
    model.load_state_dict(torch.load(os.path.join(d, "weights.pt"), weights_only=True))
    model.eval()
    clean = torch.from_numpy(np.load(os.path.join(d, "clean.npy"))).long()
    corrupt = torch.from_numpy(np.load(os.path.join(d, "corrupt.npy"))).long()
    base = F.log_softmax(model(clean), dim=-1)
    metric = partial(kl_divergence, base_model_logprobs=base, last_seq_element_only=False)
    os.makedirs("ims", exist_ok=True)
    t = time.perf_counter()
    exp = TLACDCExperiment(model=model, threshold=tau, ds=clean, ref_ds=corrupt, metric=metric,
                           zero_ablation=False, verbose=True, indices_mode="normal",
                           names_mode="normal", corrupted_cache_cpu=True, online_cache_cpu=True,
                           add_sender_hooks=True, use_pos_embed=False, add_receiver_hooks=False,
                           remove_redundant=False, show_full_index=False, using_wandb=False)
    setup_s = time.perf_counter() - t
    passes = []
    update = exp.update_cur_metric
    def timed_update(recalc_metric=True, recalc_edges=True, initial=False):
        t = time.perf_counter()
        update(recalc_metric=recalc_metric, recalc_edges=recalc_edges, initial=initial)
        if recalc_metric:
            passes.append((time.perf_counter() - t, not recalc_edges))
    exp.update_cur_metric = timed_update
    edges = [e for e in exp.corr.all_edges().values() if e.edge_type != EdgeType.PLACEHOLDER]
    def tested():
        return sum(1 for e in edges if e.effect_size is not None)
    steps = []
    while exp.current_node is not None and tested() < max_tests:
        node = str(exp.current_node)
        t = time.perf_counter()
        exp.step(testing=False)
        steps.append({"node": node, "wall_s": time.perf_counter() - t, "tested": tested()})
    wall, n = sum(s["wall_s"] for s in steps), tested()
    test_passes = [p for p, is_test in passes if is_test]
    print("RESULT " + json.dumps({
        "imports_s": imports_s, "setup_s": setup_s, "graph_edges": len(edges),
        "steps": steps, "steps_wall_s": wall, "edge_tests": n, "s_per_edge_test": wall / n,
        "forward_passes": len(passes), "edge_test_passes": len(test_passes),
        "edge_test_pass_median_s": statistics.median(test_passes) if test_passes else None,
        "removed": sum(1 for e in edges if e.effect_size is not None and not e.present)}))
    """
)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Runner:
    """Runs timed commands (wall time from outside) and keeps one example of each command."""

    def __init__(self, scratch: Path, pin: bool):
        self.scratch, self.pin, self.commands = scratch, pin, {}

    def run(self, kind: str, cmd: list[str], env: dict, cwd: Path | None = None) -> dict:
        cwd = cwd or self.scratch
        cwd.mkdir(parents=True, exist_ok=True)
        if self.pin and shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        self.commands.setdefault(kind, [c if len(c) < 300 else c[:60] + "..." for c in cmd])
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd,
                                  timeout=TIMEOUT_S)  # fmt: skip
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as err:
            rc, stdout, stderr = "timeout", err.stdout or "", err.stderr or ""
            stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
            stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
        out = {"wall_s": time.perf_counter() - t, "returncode": rc}
        for line in stdout.splitlines():
            for tag, key in (("STATS ", "jax"), ("RESULT ", "result")):
                if line.startswith(tag):
                    out[key] = json.loads(line[len(tag) :])
        if rc != 0:
            out["stderr_tail"] = stderr[-1500:]
            print(f"  ! {kind} exited {rc}: {stderr[-300:]}", flush=True)
        return out


class Bench:
    def __init__(self, args, scratch: Path):
        self.args, self.scratch = args, scratch
        self.runner = Runner(scratch, args.pin_one_core)
        self.taus = (
            PAPER_TAUS if not args.quick else [PAPER_TAUS[0], PAPER_TAUS[10], PAPER_TAUS[20]]
        )
        self.env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        for var in ("JACDC_NO_CACHE", "JAX_COMPILATION_CACHE_DIR"):
            self.env.pop(var, None)
        self.orig = Path(args.original) if args.original else None
        self.ac = args.auto_circuit_python
        self.ac_script = str(HERE / "peers_autocircuit.py")
        self._warm: dict[str, Path] = {}
        self._tracr_data: Path | None = None

    # -- jacdc ---------------------------------------------------------------------------------
    def jacdc_env(self, cache: Path) -> dict:
        return dict(self.env, JACDC_CACHE_DIR=str(cache))

    def sweep_cmd(self, task: str, ablation: str, out: Path) -> list[str]:
        taus = (["--paper-thresholds"] if self.taus == PAPER_TAUS
                else ["--thresholds", *map(repr, self.taus)])  # fmt: skip
        zero = ["--zero-ablation"] if ablation == "zero" else []
        return [sys.executable, "-c", JACDC_CLI, "sweep", task, *taus, "--metric", "l2", *zero,
                "--positions", self.args.positions, "--no-progress", "--fresh",
                "--out", str(out)]  # fmt: skip

    def jacdc_sweeps(self, cache: Path) -> dict:
        """The 4 `jacdc sweep` processes, one after another, in cache folder `cache`."""
        procs = {}
        for task in TASKS:
            for ablation in ABLATIONS:
                out = self.scratch / "runs" / f"{task}-{ablation}"
                procs[f"{task}/{ablation}"] = self.runner.run(
                    "jacdc sweep", self.sweep_cmd(task, ablation, out), self.jacdc_env(cache)
                )
        total = sum(p["wall_s"] for p in procs.values())
        corrupted = sum(p["wall_s"] for k, p in procs.items() if k.endswith("/corrupted"))
        return {"wall_s": total, "corrupted_only_wall_s": corrupted, "processes": procs}

    def warm_cache(self, name: str, fill) -> Path:
        """A cache folder filled once, untimed, by `fill(folder)`."""
        if name not in self._warm:
            folder = self.scratch / f"warm-{name}"
            fill(folder)
            self._warm[name] = folder
        return self._warm[name]

    def cold_cache(self, tag: str) -> Path:
        folder = self.scratch / f"cold-{tag}"
        shutil.rmtree(folder, ignore_errors=True)
        return folder

    # -- the original --------------------------------------------------------------------------
    def orig_env(self) -> dict:
        return dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(self.orig))

    def orig_cmd(self, task: str, tau: float, zero: bool) -> list[str]:
        return [self.args.original_python, str(self.orig / "acdc" / "main.py"), "--task", task,
                "--threshold", repr(tau), "--metric", "l2", "--device", "cpu",
                "--torch-num-threads", "1", *(["--zero-ablation"] if zero else [])]  # fmt: skip

    def orig_process(self, task: str, tau: float, ablation: str) -> dict:
        cwd = Path(tempfile.mkdtemp(dir=self.scratch, prefix="orig-"))  # it writes ims/, *.pkl
        r = self.runner.run("original main.py", self.orig_cmd(task, tau, ablation == "zero"),
                            self.orig_env(), cwd)  # fmt: skip
        shutil.rmtree(cwd, ignore_errors=True)
        return dict(r, task=task, ablation=ablation, tau=tau)

    def orig_sample(self, rep: int) -> list[tuple[str, str, float]]:
        """The runs of repetition `rep`: all of them, or `--original-sample` spread evenly over
        the 4 groups, other thresholds in each repetition."""
        groups = [(t, a) for t in TASKS for a in ABLATIONS]
        k = self.args.original_sample
        if k is None or k >= len(groups) * len(self.taus):
            return [(t, a, tau) for t, a in groups for tau in self.taus]
        orders = []
        for g, _ in enumerate(groups):
            idx = list(range(len(self.taus)))
            random.Random(1000 * rep + g).shuffle(idx)
            orders.append(idx)
        return [(*groups[i % 4], self.taus[orders[i % 4][i // 4]]) for i in range(k)]

    def orig_extrapolate(self, procs: list[dict]) -> float:
        """84-run (or n_taus x 4) total from a sample: each group's mean x its run count."""
        total, every = 0.0, [p["wall_s"] for p in procs]
        for task in TASKS:
            for ablation in ABLATIONS:
                g = [p["wall_s"] for p in procs if p["task"] == task and p["ablation"] == ablation]
                total += (statistics.mean(g) if g else statistics.mean(every)) * len(self.taus)
        return total

    # -- auto-circuit --------------------------------------------------------------------------
    def tracr_data(self) -> Path:
        """jacdc's validation token arrays of both tracr tasks, as `.npy` for auto-circuit."""
        if self._tracr_data is None:
            from jacdc import tasks

            folder = self.scratch / "tracr-data"
            folder.mkdir(parents=True, exist_ok=True)
            for name in TASKS:
                val = tasks.load_task(name, positions=self.args.positions).val
                np.save(folder / f"{AC_TASK[name]}_clean.npy", np.asarray(val.clean))
                np.save(folder / f"{AC_TASK[name]}_corrupt.npy", np.asarray(val.corrupted))
            self._tracr_data = folder
        return self._tracr_data

    def ac_tracr(self, tasks_: list[str], taus: list[float]) -> dict:
        src = (["--prompts-dir", self.args.auto_circuit_prompts] if self.args.auto_circuit_prompts
               else ["--data", str(self.tracr_data())])  # fmt: skip
        cmd = [self.ac, self.ac_script, "tracr", "--tasks", ",".join(AC_TASK[t] for t in tasks_),
               "--taus", *map(repr, taus), *src]  # fmt: skip
        return self.runner.run("auto-circuit tracr", cmd, dict(os.environ, TQDM_DISABLE="1"))

    # -- rows ----------------------------------------------------------------------------------
    def row_a(self) -> dict:
        reps = self.args.reps
        res = {"jacdc_cold": [], "jacdc_warm": []}
        warm = self.warm_cache("a", self.jacdc_sweeps)
        if self.orig:
            res["original"] = []
        if self.ac:
            res["auto_circuit"] = []
        for rep in range(reps):
            cold = self.cold_cache(f"a-{rep}")
            res["jacdc_cold"].append(self.jacdc_sweeps(cold))
            shutil.rmtree(cold, ignore_errors=True)
            res["jacdc_warm"].append(self.jacdc_sweeps(warm))
            print(f"(a) rep {rep}: jacdc cold {res['jacdc_cold'][-1]['wall_s']:.1f} s, warm "
                  f"{res['jacdc_warm'][-1]['wall_s']:.1f} s (4 processes)", flush=True)  # fmt: skip
            if self.orig:
                procs = [self.orig_process(t, tau, a) for t, a, tau in self.orig_sample(rep)]
                total = sum(p["wall_s"] for p in procs)
                extra = self.orig_extrapolate(procs)
                res["original"].append({"processes": procs, "measured_wall_s": total,
                                        "measured_processes": len(procs),
                                        "extrapolated_wall_s": extra})  # fmt: skip
                print(
                    f"(a) rep {rep}: original {len(procs)} processes {total:.1f} s "
                    f"(median {_median(p['wall_s'] for p in procs):.1f} s each), "
                    f"{4 * len(self.taus)} runs extrapolated {extra:.1f} s",
                    flush=True,
                )
            if self.ac:
                procs = {t: self.ac_tracr([t], self.taus) for t in TASKS}
                total = sum(p["wall_s"] for p in procs.values())
                res["auto_circuit"].append({"wall_s": total, "processes": procs})
                print(
                    f"(a) rep {rep}: auto-circuit 2 processes ({2 * len(self.taus)} corrupted "
                    f"runs) {total:.1f} s",
                    flush=True,
                )
        n_runs = 4 * len(self.taus)
        summary = {
            "jacdc_cold_s": _median(r["wall_s"] for r in res["jacdc_cold"]),
            "jacdc_warm_s": _median(r["wall_s"] for r in res["jacdc_warm"]),
            "jacdc_cold_corrupted_only_s": _median(
                r["corrupted_only_wall_s"] for r in res["jacdc_cold"]
            ),
            "jacdc_warm_corrupted_only_s": _median(
                r["corrupted_only_wall_s"] for r in res["jacdc_warm"]
            ),
            "jacdc_per_process_s": {
                k: {
                    state: _median(r["processes"][k]["wall_s"] for r in res[f"jacdc_{state}"])
                    for state in ("cold", "warm")
                }
                for k in res["jacdc_warm"][0]["processes"]
            },  # fmt: skip
        }
        if self.orig:
            every = [p["wall_s"] for r in res["original"] for p in r["processes"]]
            summary["original_runs"] = n_runs
            summary["original_measured_per_process_median_s"] = _median(every)
            summary["original_extrapolated_s"] = _median(
                r["extrapolated_wall_s"] for r in res["original"]
            )
            summary["original_sampled"] = self.args.original_sample is not None and (
                self.args.original_sample < n_runs
            )
        if self.ac:
            runs = [run for r in res["auto_circuit"] for p in r["processes"].values()
                    if "result" in p for task in p["result"]["tasks"].values()
                    for run in task["runs"]]  # fmt: skip
            summary["auto_circuit_corrupted_only_s"] = _median(
                r["wall_s"] for r in res["auto_circuit"]
            )
            summary["auto_circuit_per_run_median_s"] = _median(x["wall_s"] for x in runs)
            summary["auto_circuit_per_process_s"] = {
                t: _median(r["processes"][t]["wall_s"] for r in res["auto_circuit"]) for t in TASKS
            }
        return {"runs": n_runs, "thresholds": self.taus, "summary": summary, "raw": res}

    def sweep_api(self, cache: Path) -> dict:
        cmd = [sys.executable, "-c", JACDC_SWEEP_API, json.dumps(self.taus), self.args.positions]
        return self.runner.run("jacdc acdc_sweep (API)", cmd, self.jacdc_env(cache))

    def row_b(self) -> dict:
        res = {"jacdc_cold": [], "jacdc_warm": []}
        warm = self.warm_cache("b", self.sweep_api)
        if self.ac:
            res["auto_circuit"] = []
        for rep in range(self.args.reps):
            cold = self.cold_cache(f"b-{rep}")
            res["jacdc_cold"].append(self.sweep_api(cold))
            shutil.rmtree(cold, ignore_errors=True)
            res["jacdc_warm"].append(self.sweep_api(warm))
            line = (f"(b) rep {rep}: jacdc {4 * len(self.taus)} runs in one process: cold "
                    f"{res['jacdc_cold'][-1]['wall_s']:.1f} s, warm "
                    f"{res['jacdc_warm'][-1]['wall_s']:.1f} s")  # fmt: skip
            if self.ac:
                res["auto_circuit"].append(self.ac_tracr(list(TASKS), self.taus))
                n, wall = 2 * len(self.taus), res["auto_circuit"][-1]["wall_s"]
                line += f"; auto-circuit {n} corrupted runs {wall:.1f} s"
            print(line, flush=True)

        def corrupted_in_process(r):
            sweeps = r.get("result", {}).get("sweeps", {})
            return sum(v["wall_s"] for k, v in sweeps.items() if k.endswith("/corrupted")) or None

        summary = {
            "jacdc_cold_s": _median(r["wall_s"] for r in res["jacdc_cold"]),
            "jacdc_warm_s": _median(r["wall_s"] for r in res["jacdc_warm"]),
            "jacdc_warm_corrupted_sweeps_in_process_s": _median(
                corrupted_in_process(r) for r in res["jacdc_warm"]
            ),
        }
        if self.ac:
            summary["auto_circuit_corrupted_only_s"] = _median(
                r["wall_s"] for r in res["auto_circuit"]
            )
            summary["auto_circuit_runs_in_process_s"] = _median(
                sum(t["runs_s"] for t in r["result"]["tasks"].values())
                for r in res["auto_circuit"]
                if "result" in r
            )
        if self.orig:
            summary["original"] = "no in-process sweep: main.py is one run per process, see (a)"
        return {"runs": 4 * len(self.taus), "summary": summary, "raw": res}

    def discover_cmd(self, out: Path) -> list[str]:
        return [sys.executable, "-c", JACDC_CLI, "discover", "tracr-reverse", "--threshold",
                "0.01", "--metric", "l2", "--positions", self.args.positions, "--no-progress",
                "--fresh", "--out", str(out)]  # fmt: skip

    def row_c(self) -> dict:
        out = self.scratch / "runs" / "discover"

        def discover(cache):
            return self.runner.run("jacdc discover", self.discover_cmd(out), self.jacdc_env(cache))

        res = {"jacdc_cold": [], "jacdc_warm": []}
        warm = self.warm_cache("c", discover)
        if self.orig:
            res["original"] = []
        if self.ac:
            res["auto_circuit"] = []
        for rep in range(self.args.reps):
            cold = self.cold_cache(f"c-{rep}")
            res["jacdc_cold"].append(discover(cold))
            shutil.rmtree(cold, ignore_errors=True)
            res["jacdc_warm"].append(discover(warm))
            if self.orig:
                res["original"].append(self.orig_process("tracr-reverse", 0.01, "corrupted"))
            if self.ac:
                res["auto_circuit"].append(self.ac_tracr(["tracr-reverse"], [0.01]))
            print(f"(c) rep {rep}: " + ", ".join(f"{k} {v[-1]['wall_s']:.1f} s"
                                                 for k, v in res.items()), flush=True)  # fmt: skip
        summary = {f"{k}_s": _median(r["wall_s"] for r in v) for k, v in res.items()}
        return {"summary": summary, "raw": res}

    def row_d(self) -> dict:
        args = self.args
        d = self.scratch / "edge"
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps(EDGE_MODEL))
        rng = np.random.default_rng(args.edge_seed)
        np.save(d / "clean.npy", rng.integers(0, EDGE_MODEL["d_vocab"], (EDGE_BATCH, EDGE_SEQ)))
        np.save(d / "corrupt.npy", rng.integers(0, EDGE_MODEL["d_vocab"], (EDGE_BATCH, EDGE_SEQ)))
        setup = {}
        if self.orig:
            make = [args.original_python, "-c", ORIG_EDGE, "make", str(d), str(args.edge_seed)]
            setup["make_weights"] = self.runner.run("original make weights", make,
                                                    self.orig_env())  # fmt: skip
        else:  # no TransformerLens 1.6.1 here: its initialisation, in NumPy
            np.savez(d / "weights.npz", **_tl_like_weights(args.edge_seed))
            setup["make_weights"] = "NumPy, TransformerLens's gpt2 init (no --original)"
        k = args.edge_tests
        jenv = self.jacdc_env(self.scratch / "edge-cache")
        tau = EDGE_TAU if args.edge_tau is None else args.edge_tau
        if args.edge_tau == "auto":
            cal = self.runner.run("jacdc calibrate tau",
                                  [sys.executable, "-c", JACDC_EDGE, "calibrate", str(d), "305"],
                                  jenv)  # fmt: skip
            setup["calibrate"] = cal
            tau = cal["result"]["tau"]
        setup["tau"] = tau
        print(f"(d) tau {tau:.3g}, {k} edge tests per contestant", flush=True)
        res = {"jacdc": []}
        if self.orig:
            res["original"] = []
        if self.ac:
            res["auto_circuit"] = []
        for rep in range(args.edge_reps or args.reps):
            cold = self.cold_cache(f"d-{rep}")  # compilation is measured, not read from a cache
            cmd = [sys.executable, "-c", JACDC_EDGE, "run", str(d), repr(tau), str(k),
                   "fast,reference", str(args.edge_warmup)]  # fmt: skip
            res["jacdc"].append(self.runner.run("jacdc edge tests", cmd, self.jacdc_env(cold)))
            shutil.rmtree(cold, ignore_errors=True)
            if self.orig:
                cwd = Path(tempfile.mkdtemp(dir=self.scratch, prefix="orig-edge-"))
                cmd = [args.original_python, "-c", ORIG_EDGE, "run", str(d), repr(tau), str(k)]
                res["original"].append(self.runner.run("original edge tests", cmd,
                                                       self.orig_env(), cwd))  # fmt: skip
                shutil.rmtree(cwd, ignore_errors=True)
            if "auto_circuit" in res:
                cmd = [self.ac, self.ac_script, "edge", "--weights", str(d / "weights.npz"),
                       "--config", str(d / "config.json"), "--tokens", str(d), "--tau",
                       repr(tau), "--max-edges", str(k)]  # fmt: skip
                ac_env = dict(os.environ, TQDM_DISABLE="1")
                res["auto_circuit"].append(self.runner.run("auto-circuit edge tests", cmd, ac_env))
            parts = []
            j = res["jacdc"][-1].get("result", {})
            for eng in ("fast", "reference"):
                if eng in j:
                    e = j[eng]
                    parts.append(
                        f"jacdc {eng} {e['s_per_edge_test']:.3f} s/test "
                        f"({e['edge_tests']} tests, compile {e['compile_s']:.1f} s)"
                    )
            for name in ("original", "auto_circuit"):
                r = res.get(name, [{}])[-1].get("result")
                if r:
                    n = r.get("edge_tests", r.get("edges_tested"))
                    parts.append(f"{name} {r['s_per_edge_test']:.3f} s/test ({n} tests)")
            print(f"(d) rep {rep}: " + "; ".join(parts), flush=True)

        def per_test(runs, *path):
            vals = []
            for r in runs:
                x = r.get("result")
                for p in path:
                    x = x.get(p) if isinstance(x, dict) else None
                vals.append(x)
            return _median(vals)

        summary = {
            "tau": tau,
            "edge_tests_requested": k,
            "jacdc_fast_s_per_edge_test": per_test(res["jacdc"], "fast", "s_per_edge_test"),
            "jacdc_fast_compile_s": per_test(res["jacdc"], "fast", "compile_s"),
            "jacdc_reference_s_per_edge_test": per_test(
                res["jacdc"], "reference", "s_per_edge_test"
            ),
            "jacdc_reference_compile_s": per_test(res["jacdc"], "reference", "compile_s"),
            "jacdc_fast_device_calls_s_per_edge_test": per_test(
                res["jacdc"], "fast", "calls_s_per_edge_test"
            ),
        }
        if self.orig:
            summary["original_s_per_edge_test"] = per_test(res["original"], "s_per_edge_test")
            summary["original_edge_test_pass_median_s"] = per_test(
                res["original"], "edge_test_pass_median_s"
            )
            summary["original_setup_s"] = per_test(res["original"], "setup_s")
        if "auto_circuit" in res:
            summary["auto_circuit_s_per_edge_test"] = per_test(
                res["auto_circuit"], "s_per_edge_test"
            )
            summary["auto_circuit_s_per_edge_test_with_setup"] = per_test(
                res["auto_circuit"], "s_per_edge_test_with_setup"
            )
        return {
            "model": dict(EDGE_MODEL, batch=EDGE_BATCH, seq=EDGE_SEQ, seed=args.edge_seed),
            "setup": setup,
            "summary": summary,
            "raw": res,
        }


# Per row: (jacdc figure, peer figure) pairs of the summary compared in "ahead" (peer / jacdc).
COMPARE = {
    "a": [("jacdc_warm_s", "original_extrapolated_s"), ("jacdc_cold_s", "original_extrapolated_s"),
          ("jacdc_warm_corrupted_only_s", "auto_circuit_corrupted_only_s"),
          ("jacdc_cold_corrupted_only_s", "auto_circuit_corrupted_only_s")],
    "b": [("jacdc_warm_s", "auto_circuit_corrupted_only_s"),
          ("jacdc_cold_s", "auto_circuit_corrupted_only_s")],
    "c": [(j, p) for j in ("jacdc_warm_s", "jacdc_cold_s") for p in ("original_s",
                                                                    "auto_circuit_s")],
    "d": [(j, p) for j in ("jacdc_fast_s_per_edge_test", "jacdc_reference_s_per_edge_test")
          for p in ("original_s_per_edge_test", "auto_circuit_s_per_edge_test")],
}  # fmt: skip


def _ahead(row: str, summary: dict) -> dict:
    """`{"jacdc_x vs peer_y": peer / jacdc}` (> 1: jacdc ahead) for the figures present."""
    out = {}
    for j, p in COMPARE[row]:
        if summary.get(j) and summary.get(p):
            out[f"{j} vs {p}"] = summary[p] / summary[j]
    return out


def _tl_like_weights(seed: int) -> dict:
    """Row (d)'s weights without the original's environment: TransformerLens's "gpt2"
    initialisation (weights N(0, 0.8 / sqrt(d_model)), biases 0, LayerNorm 1 / 0), TL names."""
    rng = np.random.default_rng(seed)
    c = EDGE_MODEL
    d, H, e, V = c["d_model"], c["n_heads"], c["d_head"], c["d_vocab"]
    std = 0.8 / np.sqrt(d)

    def w(*shape):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    sd = {"embed.W_E": w(V, d), "pos_embed.W_pos": w(c["n_ctx"], d)}
    for i in range(c["n_layers"]):
        b = f"blocks.{i}."
        sd |= {b + "ln1.w": np.ones(d, np.float32), b + "ln1.b": np.zeros(d, np.float32)}
        for x in "QKV":
            sd |= {b + f"attn.W_{x}": w(H, d, e), b + f"attn.b_{x}": np.zeros((H, e), np.float32)}
        sd |= {b + "attn.W_O": w(H, e, d), b + "attn.b_O": np.zeros(d, np.float32)}
    sd |= {"ln_final.w": np.ones(d, np.float32), "ln_final.b": np.zeros(d, np.float32),
           "unembed.W_U": w(d, V), "unembed.b_U": np.zeros(V, np.float32)}  # fmt: skip
    return sd


def _versions(args) -> dict:
    import jacdc

    v = {"jacdc": getattr(jacdc, "__version__", None)}
    try:
        git = ["git", "-C", str(REPO), "rev-parse", "HEAD"]
        v["jacdc_commit"] = subprocess.run(git, capture_output=True, text=True).stdout.strip()
    except OSError:
        pass

    def pkgs(py, names):
        code = textwrap.dedent(
            f"""
            import importlib.metadata as m, json
            out = {{}}
            for p in {names!r}:
                try:
                    out[p] = m.version(p)
                except Exception:
                    out[p] = None
            print(json.dumps(out))
            """
        )
        r = subprocess.run([py, "-c", code], capture_output=True, text=True)
        return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-300:]}

    v["jacdc_env"] = pkgs(sys.executable, ["jax", "jaxlib", "numpy", "tracr-pypi"])
    if args.original:
        v["original"] = pkgs(args.original_python, ["torch", "transformer-lens", "numpy",
                                                     "tracr-pypi", "jax"])  # fmt: skip
        exp = Path(args.original) / "acdc" / "TLACDCExperiment.py"
        if exp.exists():
            v["original"]["TLACDCExperiment.py_sha256"] = hashlib.sha256(
                exp.read_bytes()
            ).hexdigest()
        v["original"]["source"] = f"{args.original} (expected: bc99ace8, unmodified)"
    if args.auto_circuit_python:
        names = ["auto-circuit", "torch", "transformer-lens", "numpy"]
        v["auto_circuit"] = pkgs(args.auto_circuit_python, names)
    return v


NOTES = [
    "Peers run with one torch thread (peers.md); jacdc with XLA's default threads unless "
    "--pin-one-core (then every timed process is on core 0).",
    "auto-circuit has no zero-ablation ACDC: its rows (a)/(b) cover the 42 corrupted runs only "
    "(compare with jacdc's corrupted-only figures as well).",
    "auto-circuit's tracr graphs are coarser than ACDC's: one embedding node and no q/k/v "
    "direct-computation edges (77 / 23 edges vs 106 / 38); its ACDC visits edges by receiver "
    "layer (latest first), starts each forward at the receiver's layer, tests every edge (no "
    "skipping of disconnected nodes) and uses MSE over positions 1.. for `l2`.",
    "auto-circuit's tracr inputs: jacdc's validation arrays (the original's shapes: 6 x 4 "
    "reverse, 50 x 4 proportion) unless --auto-circuit-prompts; it never shuffles positions in "
    "the corrupted run.",
    "The original draws its tracr data with torch's RNG (--seed 1234) and jacdc with NumPy (seed "
    "0): same shapes and construction, other rows (proportion) / derangements.",
    "jacdc's warm state caches the compiled tracr models as well as XLA's compilations; the "
    "original compiles tracr (~5 s) in every process.",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", help="the original ACDC source tree (ORIG, on PYTHONPATH)")
    p.add_argument("--original-python", help="the Python of the original's environment")
    p.add_argument("--auto-circuit-python", help="the Python of auto-circuit's environment")
    p.add_argument("--auto-circuit-prompts",
                   help="auto-circuit's datasets/tracr folder: use its own prompt files instead "
                        "of jacdc's arrays (first 6 / 50 prompts, 6 tokens)")  # fmt: skip
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", default="a,b,c,d")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--quick", action="store_true", help="smoke test: 3 thresholds, 1 rep, ...")
    p.add_argument("--original-sample", type=int,
                   help="(a): original processes timed per repetition (default: all)")  # fmt: skip
    p.add_argument("--positions", choices=["none", "shuffled"], default="shuffled",
                   help="jacdc's tracr positional corruption (default shuffled, as the "
                        "original at bc99ace8)")  # fmt: skip
    p.add_argument(
        "--edge-tests",
        type=int,
        default=17,
        help="(d): edge tests per contestant (default 17: the first receiver's, resid_post)",
    )
    p.add_argument(
        "--edge-tau",
        type=lambda x: x if x == "auto" else float(x),
        help=f"(d): threshold, or auto: calibrate it (default {EDGE_TAU})",
    )
    p.add_argument("--edge-reps", type=int, help="(d): repetitions (default: --reps)")
    p.add_argument(
        "--edge-warmup",
        type=int,
        default=2,
        help="(d): edge tests of jacdc's untimed compiling run (default 2)",
    )
    p.add_argument("--edge-seed", type=int, default=0)
    p.add_argument("--pin-one-core", action="store_true",
                   help="run every timed process on core 0 (taskset)")  # fmt: skip
    p.add_argument("--keep-scratch", action="store_true")
    args = p.parse_args(argv)
    if bool(args.original) != bool(args.original_python):
        p.error("--original and --original-python go together")
    if args.quick:
        args.reps = 1
        if args.original_sample is None:
            args.original_sample = 4
    rows = [r for r in args.only.split(",") if r]
    scratch = Path(tempfile.mkdtemp(prefix="jacdc-peers-"))
    # This process loads jacdc's tracr tasks (for auto-circuit's inputs): in a cache of its own,
    # not the user's.
    os.environ["JACDC_CACHE_DIR"] = str(scratch / "parent-cache")
    bench = Bench(args, scratch)
    doc = dict(_results.header("benchmarks/peers.py"))
    doc.update(
        settings={k: v for k, v in vars(args).items()},
        versions=_versions(args),
        notes=NOTES,
        rows={},
    )
    names = {"a": "a_sweep_cli", "b": "b_sweep_one_process", "c": "c_first_result",
             "d": "d_edge_test"}  # fmt: skip
    try:
        for row in rows:
            t, load = time.perf_counter(), _load()
            result = getattr(bench, f"row_{row}")()
            result["ahead"] = _ahead(row, result["summary"])
            result["load_before_after"] = [load, _load()]
            result["row_wall_s"] = time.perf_counter() - t
            doc["rows"][names[row]] = result
            print(f"({row}) summary: {json.dumps(result['summary'])}", flush=True)
            ahead = ", ".join(f"{k}: {v:.2f}x" for k, v in result["ahead"].items())
            print(f"({row}) peer / jacdc: {ahead}", flush=True)
            doc["commands"] = bench.runner.commands
            _results.write(dict(doc), args.out)  # after every row: nothing lost if interrupted
    finally:
        if not args.keep_scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
