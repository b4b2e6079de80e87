"""Train a small 2-layer attention-only transformer that does induction, on CPU, in minutes.

The model has the kind of architecture as redwood_attn_2l (the ACDC paper's induction model):
attention only, LayerNorm, shortformer positions (added to the query and key inputs only, so the
graph has one embedding node). It is trained with optax (AdamW) on sequences made of a random
block of distinct tokens of random length, the same block again, and filler, until the loss on
the repeated tokens is near zero. Because the block length varies, no fixed positional offset
finds the repeat: the model needs an induction circuit, a previous-token head in layer 0 whose
output feeds the *key* of an induction head in layer 1.

The model is saved in the TransformerLens checkpoint format the loaders read
(`jacdc.models.load_redwood_attn_2l` with `cfg=`, or `jacdc.tasks`' induction builder given the
folder): a folder with `config.json` (TransformerLens `HookedTransformerConfig` keys) and one
checkpoint, `model_final.npz` (NumPy, TL tensor names) or, with `--format pth`,
`model_final.pth` (a torch state dict).

    python examples/train_induction.py --out /tmp/induction_2l
    jacdc discover induction --weights /tmp/induction_2l --data jacdc --seq-len 40   # CLI installed

(`--seq-len` matches the training sequences: the CLI's induction default, 300 tokens, is
redwood_attn_2l's and exceeds this model's 64-token context.) Run it with `--acdc THRESHOLD` to
also run ACDC (KL, corrupted ablation) on the task and print the circuit.
"""

import argparse
import json
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from jacdc import EdgeMask
from jacdc.models import Transformer, TransformerConfig, empty_sources


def induction_config(
    d_vocab: int = 64, d_model: int = 64, n_heads: int = 4, n_ctx: int = 64
) -> TransformerConfig:
    return TransformerConfig(
        n_layers=2,
        n_heads=n_heads,
        d_model=d_model,
        d_head=d_model // n_heads,
        d_mlp=None,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        normalization="LN",
        positional="shortformer",
    )


def sample_batch(key, batch: int, seq: int, d_vocab: int, min_block: int = 6):
    """`(tokens, mask)`, each `(batch, seq)`: every row is a block of `L` distinct random tokens,
    the same block again, then distinct filler tokens, with `L` uniform in
    `[min_block, seq // 2]` per row (so that no fixed positional offset predicts the repeat:
    only induction does). `mask` marks the positions whose next token is a repeat
    (`L <= t <= 2L - 2`). Needs `d_vocab >= seq - min_block`."""
    perm_keys = jr.split(key, batch + 1)
    lengths = jr.randint(perm_keys[0], (batch,), min_block, seq // 2 + 1)
    idx = jnp.arange(seq)

    def row(k, length):
        perm = jr.permutation(k, d_vocab)
        tokens = perm[jnp.where(idx < length, idx, idx - length)]
        mask = (idx >= length) & (idx <= 2 * length - 2)
        return tokens.astype(jnp.int32), mask

    return jax.vmap(row)(perm_keys[1:], lengths)


def forward(model: Transformer, tokens):
    """Logits of the unpatched model on a batch (every edge present)."""
    mask = EdgeMask.full(model.graph_shape)
    empty = empty_sources(model.cfg, tokens.shape[1])
    return jax.vmap(lambda t: model(t, mask, empty)[0])(tokens)


def losses(model: Transformer, tokens, mask):
    """Mean next-token loss over all positions, and over the masked (repeated) positions."""
    logits = forward(model, tokens)[:, :-1]
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, :-1].astype(nll.dtype)
    return nll.mean(), (nll * weights).sum() / weights.sum()


def train(
    *,
    steps: int = 3000,
    batch: int = 32,
    seq: int = 40,
    seed: int = 0,
    lr: float = 5e-3,
    cfg: TransformerConfig | None = None,
    log_every: int = 100,
    target: float = 0.05,
    verbose: bool = True,
) -> tuple[Transformer, dict]:
    """Trains until the repeated-token loss (averaged over the last `log_every` steps) is below
    `target`, or for `steps` steps. Returns the model and a summary."""
    cfg = induction_config() if cfg is None else cfg
    model_key, data_key = jr.split(jr.key(seed))
    model = Transformer(cfg, key=model_key)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps)
    optimiser = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, 1e-4))
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, key):
        tokens, mask = sample_batch(key, batch, seq, cfg.d_vocab)

        def loss_fn(m):
            return losses(m, tokens, mask)

        (loss, repeated), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss, repeated

    start = time.perf_counter()
    history = []
    window = []
    done = 0
    for i, key in enumerate(jr.split(data_key, steps)):
        model, opt_state, loss, repeated = step(model, opt_state, key)
        window.append(float(repeated))
        done = i + 1
        if done % log_every == 0:
            recent = float(np.mean(window[-log_every:]))
            history.append({"step": done, "loss": float(loss), "repeated_loss": recent})
            if verbose:
                print(
                    f"step {done:5d}  loss {float(loss):.3f}  loss on repeated tokens "
                    f"{recent:.4f}  ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
            if recent < target:
                break
    eval_tokens, eval_mask = sample_batch(jr.key(seed + 1_000), 256, seq, cfg.d_vocab)
    total, repeated = losses(model, eval_tokens, eval_mask)
    summary = {
        "steps": done,
        "seconds": time.perf_counter() - start,
        "eval_loss": float(total),
        "eval_repeated_loss": float(repeated),
        "uniform_loss": float(np.log(cfg.d_vocab)),
        "history": history,
    }
    return model, summary


# ---------------------------------------------------------------------------------------------
# TransformerLens checkpoint format


def transformer_lens_state_dict(model: Transformer) -> dict[str, np.ndarray]:
    """The model's weights under TransformerLens names (the inverse of
    `jacdc.models.from_transformer_lens_state_dict` for attention-only LayerNorm models)."""
    out = {
        "embed.W_E": model.w_e,
        "pos_embed.W_pos": model.w_pos,
        "ln_final.w": model.ln_final.w,
        "ln_final.b": model.ln_final.b,
        "unembed.W_U": model.w_u,
        "unembed.b_U": model.b_u,
    }
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}."
        out.update(
            {
                p + "ln1.w": blk.ln1.w,
                p + "ln1.b": blk.ln1.b,
                p + "attn.W_Q": blk.w_q,
                p + "attn.b_Q": blk.b_q,
                p + "attn.W_K": blk.w_k,
                p + "attn.b_K": blk.b_k,
                p + "attn.W_V": blk.w_v,
                p + "attn.b_V": blk.b_v,
                p + "attn.W_O": blk.w_o,
                p + "attn.b_O": blk.b_o,
            }
        )
    return {k: np.array(v, np.float32) for k, v in out.items()}  # writable copies


def transformer_lens_config_dict(cfg: TransformerConfig) -> dict:
    """`config.json` in TransformerLens's `HookedTransformerConfig` keys."""
    return {
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "d_vocab": cfg.d_vocab,
        "d_vocab_out": cfg.vocab_out,
        "n_ctx": cfg.n_ctx,
        "attn_only": True,
        "normalization_type": "LN",
        "positional_embedding_type": cfg.positional,
        "attention_dir": "causal" if cfg.causal else "bidirectional",
        "eps": cfg.ln_eps,
        "model_name": "jacdc-induction-2l",
    }


def save(model: Transformer, folder: str, fmt: str = "npz") -> str:
    """Writes `config.json` and `model_final.{npz,pth}` into `folder`; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    state = transformer_lens_state_dict(model)
    for stale in ("model_final.npz", "model_final.pth"):
        if os.path.exists(os.path.join(folder, stale)):
            os.remove(os.path.join(folder, stale))
    if fmt == "npz":
        np.savez(os.path.join(folder, "model_final.npz"), **state)
    elif fmt == "pth":
        import torch

        torch.save(
            {k: torch.from_numpy(v) for k, v in state.items()},
            os.path.join(folder, "model_final.pth"),
        )
    else:
        raise ValueError(f"format must be 'npz' or 'pth', got {fmt!r}")
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(transformer_lens_config_dict(model.cfg), f, indent=2)
    return folder


# ---------------------------------------------------------------------------------------------
# Interpretation helpers


def attention_patterns(model: Transformer, tokens) -> list[np.ndarray]:
    """Per layer, the clean model's attention patterns `(batch, head, query, key)`."""
    from jacdc.models import clean_run

    _, sources = clean_run(model, jnp.asarray(tokens))
    cfg, shape = model.cfg, model.graph_shape
    seq = tokens.shape[1]
    pos = model.w_pos[jnp.arange(seq)]
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    out = []
    bias = jnp.zeros((cfg.d_model,))
    for layer, blk in enumerate(model.blocks):
        n = shape.n_src_before_layer(layer)
        x = sources.resid[:, :n].sum(1) + bias
        x = blk.ln1(x) if blk.ln1 is not None else x
        xqk = x + pos if cfg.positional == "shortformer" else x
        q = jnp.einsum("bsd,hde->bhse", xqk, blk.w_q) + blk.b_q[None, :, None]
        k = jnp.einsum("bsd,hde->bhse", xqk, blk.w_k) + blk.b_k[None, :, None]
        scores = jnp.einsum("bhse,bhte->bhst", q, k) / cfg.scale
        scores = jnp.where(causal, scores, -jnp.inf)
        out.append(np.asarray(jax.nn.softmax(scores, -1)))
        bias = bias + blk.b_o
    return out


def find_heads(model: Transformer, tokens, mask) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(previous-token head in layer 0, induction head in layer 1, and their scores per head).

    Previous-token score: mean attention from position t to t - 1. Induction score: mean
    attention from a masked position t of a row whose block has length L to t - L + 1 (the
    token after the previous occurrence of the current one)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    p0, p1 = attention_patterns(model, tokens)
    t = np.arange(1, tokens.shape[1])
    prev = p0[:, :, t, t - 1].mean(axis=(0, 2))
    rows, queries = np.nonzero(mask)
    lengths = mask.argmax(axis=1)[rows]  # the first masked position is L
    induction = p1[rows, :, queries, queries - lengths + 1].mean(axis=0)
    return int(prev.argmax()), int(induction.argmax()), prev, induction


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="induction_2l", help="output folder")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=40, help="sequence length")
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=("npz", "pth"), default="npz")
    parser.add_argument(
        "--acdc",
        type=float,
        default=None,
        metavar="THRESHOLD",
        help="also run ACDC (KL) on the induction task at this threshold",
    )
    args = parser.parse_args(argv)

    cfg = induction_config(args.vocab, args.d_model, args.heads, n_ctx=max(64, args.seq))
    model, summary = train(
        steps=args.steps, batch=args.batch, seq=args.seq, seed=args.seed, lr=args.lr, cfg=cfg
    )
    save(model, args.out, args.format)
    print(
        f"trained {summary['steps']} steps in {summary['seconds']:.0f} s; held-out loss on "
        f"repeated tokens {summary['eval_repeated_loss']:.4f} nats (all tokens "
        f"{summary['eval_loss']:.3f}; uniform guess {summary['uniform_loss']:.3f}); saved to "
        f"{args.out}"
    )
    tokens, mask = sample_batch(jr.key(7), 100, args.seq, args.vocab)
    prev, ind, prev_scores, ind_scores = find_heads(model, tokens, mask)
    print(
        f"previous-token head 0.{prev} (scores {np.round(prev_scores, 2).tolist()}), "
        f"induction head 1.{ind} (scores {np.round(ind_scores, 2).tolist()})"
    )
    if args.acdc is not None:
        import jacdc
        from jacdc.tasks import make_induction_task

        data = (np.asarray(tokens), np.asarray(mask))
        bundle = make_induction_task(model, data=data, n_val=50, n_test=50)
        result = jacdc.acdc(model, bundle.val, args.acdc, metric="kl_div")
        print(f"ACDC (tau={args.acdc}, KL): {result.n_edges} edges, KL {result.metric:.4f}")
        for name in result.present_names:
            print("   ", name)


if __name__ == "__main__":
    main()
