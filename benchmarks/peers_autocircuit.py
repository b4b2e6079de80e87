"""auto-circuit's side of `benchmarks/peers.py`: a driver run with auto-circuit's own Python
(auto-circuit 1.0.1 in its own environment; `../shared/reference/peers.md` says how to build it).
It imports nothing from jacdc, and jacdc's environment never imports it.

Subcommands (each prints one line `RESULT {json}` with its in-process timings):

- `tracr --tasks reverse,xproportion --taus T ...`: auto-circuit's ACDC (`acdc_prune_scores`,
    always resample ablation; it has no zero-ablation ACDC) on its tracr models, one run per
    threshold (`tao_bases=[tau], tao_exps=[0]`, so each threshold is timed on its own; one call
    with all of them does the same work in one loop). Inputs: `--data DIR` with
    `{task}_clean.npy` / `{task}_corrupt.npy` (the token arrays jacdc and the original use), or
    `--prompts-dir DIR` (auto-circuit's own `datasets/tracr/tracr_{task}_len_5_prompts.json`,
    the first `--batch` prompts). Metric: `mse` over positions 1.. and every output dimension,
    the original's `l2`.
- `edge --weights SD.pt|SD.npz --config CFG.json --tokens DIR --tau T --max-edges K`: auto-circuit's
    ACDC on a TransformerLens attention-only model (the state dict the original uses), KL over
    all positions, limited to the first `K` edges of its own order (edges sorted by receiver
    layer, latest first); seconds per edge test = the wall from its first edge test to the end
    of the call / `K` (its set-up, two ablation passes and a cached clean run, reported apart).

Usage: `PY benchmarks/peers_autocircuit.py tracr|edge ...` (PY: auto-circuit's Python).
"""

import time


T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.autograd.set_grad_enabled(False)
    import torch.optim.adam as adam_module  # torch 2.13 dropped the attribute (peers.md)

    torch.optim.adam = adam_module
    return torch


def _loader(torch, clean, corrupt):
    from auto_circuit.data import PromptDataLoader, PromptDataset

    clean = torch.as_tensor(clean, dtype=torch.long)
    corrupt = torch.as_tensor(corrupt, dtype=torch.long)
    dummy = [torch.zeros(1, dtype=torch.long) for _ in range(len(clean))]
    ds = PromptDataset(clean, corrupt, dummy, dummy)
    return PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=len(clean), shuffle=False)


def _present(prune_scores, tau) -> int:
    """Edges ACDC at `tau` keeps: those it did not remove (score still inf, or above tau)."""
    return int(sum(int((s > tau).sum()) for s in prune_scores.values()))


def cmd_tracr(args) -> dict:
    torch = _setup(args.threads)
    import numpy as np
    from auto_circuit.model_utils.tracr_model_utils import get_tracr_model
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores
    from auto_circuit.utils.graph_utils import patchable_model

    t_imports = time.perf_counter() - T0
    out = {"imports_s": t_imports, "tasks": {}}
    for task in args.tasks.split(","):
        t = time.perf_counter()
        model, _ = get_tracr_model(task, "cpu")
        cpu = torch.device("cpu")
        model = patchable_model(model, factorized=True, slice_output="not_first_seq",
                                seq_len=None, separate_qkv=True, device=cpu)  # fmt: skip
        t_model = time.perf_counter() - t
        if args.prompts_dir:
            from auto_circuit.data import load_datasets_from_json

            path = Path(args.prompts_dir) / f"tracr_{task}_len_5_prompts.json"
            n = args.batch or {"reverse": 6, "xproportion": 50}[task]
            loader, _ = load_datasets_from_json(model=None, path=path,
                                                device=torch.device("cpu"), prepend_bos=False,
                                                batch_size=n, train_test_size=(n, 0),
                                                shuffle=False, return_seq_length=False,
                                                tail_divergence=False)  # fmt: skip
            source = str(path)
        else:
            clean = np.load(Path(args.data) / f"{task}_clean.npy")
            corrupt = np.load(Path(args.data) / f"{task}_corrupt.npy")
            loader = _loader(torch, clean, corrupt)
            source = str(args.data)
        batch = next(iter(loader))
        runs = []
        for tau in args.taus:
            t = time.perf_counter()
            ps = acdc_prune_scores(model, loader, None, tao_exps=[0], tao_bases=[tau],
                                   faithfulness_target="mse")  # fmt: skip
            runs.append({"tau": tau, "wall_s": time.perf_counter() - t,
                         "edges_kept": _present(ps, tau)})  # fmt: skip
        out["tasks"][task] = {
            "model_s": t_model,
            "graph_edges": model.n_edges,
            "batch": list(batch.clean.shape),
            "data": source,
            "runs": runs,
            "runs_s": sum(r["wall_s"] for r in runs),
        }
    out["wall_in_process_s"] = time.perf_counter() - T0
    return out


def cmd_edge(args) -> dict:
    torch = _setup(args.threads)
    import numpy as np
    from auto_circuit.prune_algos.ACDC import acdc_prune_scores
    from auto_circuit.utils.graph_utils import patchable_model
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    t_imports = time.perf_counter() - T0
    cfg = json.loads(Path(args.config).read_text())
    tl_cfg = HookedTransformerConfig(**cfg, use_attn_result=True, use_split_qkv_input=True,
                                     device="cpu")  # fmt: skip
    model = HookedTransformer(tl_cfg)
    if args.weights.endswith(".npz"):
        with np.load(args.weights) as f:
            sd = {k: torch.from_numpy(f[k]) for k in f.files}
    else:
        sd = torch.load(args.weights, map_location="cpu", weights_only=True)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own and not k.endswith(("attn.mask", "IGNORE"))}
    missing = [k for k in own if k not in sd and not k.endswith(("attn.mask", "IGNORE"))]
    assert not missing, f"weights missing: {missing}"
    model.load_state_dict(sd, strict=False)
    model.eval()
    model = patchable_model(model, factorized=True, slice_output=None, seq_len=None,
                            separate_qkv=True, device=torch.device("cpu"))  # fmt: skip
    n_graph = model.n_edges
    order = sorted(model.edges, key=lambda e: e.dest.layer, reverse=True)  # ACDC's own order
    k = min(args.max_edges, len(order))
    model.edges = set(order[:k])  # the first K edges of its order (the rest untouched: clean)
    model.n_edges = k
    clean = np.load(Path(args.tokens) / "clean.npy")
    corrupt = np.load(Path(args.tokens) / "corrupt.npy")
    loader = _loader(torch, clean, corrupt)
    batch = next(iter(loader))
    t = time.perf_counter()
    model(batch.clean)  # one warm-up forward (allocations), untimed in the edge time
    warmup = time.perf_counter() - t
    forward, starts = model.forward, []

    def timed_forward(*a, **kw):  # ACDC's edge tests are its forwards from a layer
        if "start_at_layer" in kw:
            starts.append(time.perf_counter())
        return forward(*a, **kw)

    model.forward = timed_forward
    t = time.perf_counter()
    ps = acdc_prune_scores(model, loader, None, tao_exps=[0], tao_bases=[args.tau],
                           faithfulness_target="kl_div")  # fmt: skip
    end = time.perf_counter()
    wall = end - t
    loop = end - starts[0]  # from the first edge test to the end: its set-up left out
    return {
        "imports_s": t_imports,
        "graph_edges": n_graph,
        "edges_tested": k,
        "warmup_forward_s": warmup,
        "acdc_wall_s": wall,
        "setup_s": wall - loop,
        "edge_loop_s": loop,
        "edge_test_forwards": len(starts),
        "s_per_edge_test": loop / k,
        "s_per_edge_test_with_setup": wall / k,
        "edges_kept": _present(ps, args.tau),
        "batch": list(batch.clean.shape),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("tracr")
    tr.add_argument("--tasks", default="reverse,xproportion")
    tr.add_argument("--taus", type=float, nargs="+", required=True)
    tr.add_argument("--data", help="folder of {task}_clean.npy / {task}_corrupt.npy")
    tr.add_argument("--prompts-dir", help="folder of auto-circuit's tracr prompt json files")
    tr.add_argument(
        "--batch",
        type=int,
        help="--prompts-dir: prompts used (default: the "
        "original's batch, 6 for reverse and 50 for xproportion)",
    )
    tr.add_argument("--threads", type=int, default=1)
    ed = sub.add_parser("edge")
    ed.add_argument("--weights", required=True)
    ed.add_argument("--config", required=True, help="json of HookedTransformerConfig arguments")
    ed.add_argument("--tokens", required=True, help="folder of clean.npy / corrupt.npy")
    ed.add_argument("--tau", type=float, required=True)
    ed.add_argument("--max-edges", type=int, default=50)
    ed.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.cmd == "tracr" and not (args.data or args.prompts_dir):
        p.error("tracr needs --data or --prompts-dir")
    out = cmd_tracr(args) if args.cmd == "tracr" else cmd_edge(args)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
