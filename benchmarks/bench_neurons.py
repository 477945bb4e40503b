"""Benchmark of the neuron science (not a test): prints tables.

    python benchmarks/bench_neurons.py            # everything (about 1 min on 2 CPU cores)
    python benchmarks/bench_neurons.py --quick    # skip the ~100M-parameter model

1. identification on the reference data (32 x 14336 x 10): seconds per lam, whole automatic search;
2. the per-layer count reduction: candidate formulations at the ~100M model's shape (the fastest is what counting uses);
3. counting overhead: forward with counting / the same forward without hooks (interleaved, median), for a tiny and a
   ~100M-parameter model;
4. memory: peak RSS of counting 10 vs 100 batches (fresh process each), against the size of the counters.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from langneurons import cpu_numerics  # noqa: E402

cpu_numerics.pin()  # before torch: the same kernels on every x86 CPU

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from langneurons.languages import PAPER_LANGS  # noqa: E402
from langneurons.neurons import Identifier, collect_stats, identify, load_stats  # noqa: E402
from langneurons.neurons.probing import accepts_position_ids, evaluating, forward_kwargs, model_inputs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LANGS = PAPER_LANGS

SHAPES = {  # name: (hidden, layers, intermediate, vocab, heads, batch, seq)
    "tiny": (32, 3, 64, 100, 4, 4, 32),
    "llama-100M": (768, 12, 2048, 32000, 12, 4, 256),
    "memory": (256, 4, 1024, 1000, 4, 4, 128),
}


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |")


def build(shape: str, seed: int = 0):
    hidden, layers, inter, vocab, heads, batch, seq = SHAPES[shape]
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter, vocab_size=vocab,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=seq)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return model, batch, seq, vocab


def make_batch(batch: int, seq: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    attention = torch.ones(batch, seq, dtype=torch.long)
    attention[1, seq - seq // 4 :] = 0  # some right padding
    count_mask = torch.zeros(batch, seq, dtype=torch.bool)
    count_mask[:, seq // 3 :] = True  # response = last two thirds
    return {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=gen),
        "attention_mask": attention,
        "count_mask": count_mask & attention.bool(),
        "lang_ids": torch.randint(0, len(LANGS), (batch,), generator=gen),
    }


# ---- 1. identification -----------------------------------------------------------------------------------------
def bench_identification(reps: int) -> None:
    env = os.environ.get("LANGNEURONS_SHARED_DATA")
    source = (Path(env) if env else REPO / ".." / "shared" / "data") / "reference-mistral-mgsm"
    if not source.is_dir():
        print(f"\n(identification skipped: no reference data at {source})")
        return
    start = time.perf_counter()
    stats = load_stats(source)
    load_s = time.perf_counter() - start
    probs = stats.probs()
    lams = [0.05, 0.08, 0.1, 0.105, 0.109375, 0.11, 0.12, 0.15, 0.2]

    identifier = Identifier(probs, stats.langs)
    start = time.perf_counter()
    _ = identifier.entropy, identifier.max_prob, identifier.threshold(0.95)
    pre_s = time.perf_counter() - start
    per_lam_check = statistics.median(
        median_time(lambda lam=lam: identifier.has_general_selected(lam, 0.01, 0.95), 3) for lam in lams)
    per_lam_full = statistics.median(
        median_time(lambda lam=lam: identifier.ternary(lam, 0.01, 0.95), 3) for lam in lams)
    search = median_time(lambda: identify(stats, top_rate=0.01, lam="auto", bar=0.95), reps)
    fixed = median_time(lambda: identify(stats, top_rate=0.01, lam=0.109375, bar=0.95), reps)
    lape = median_time(lambda: identify(stats, "lape", top_rate=0.01), reps)
    found = identify(stats, lam="auto")
    table(
        f"Identification on the reference data {tuple(stats.counts.shape)} (torch threads: {torch.get_num_threads()})",
        ["what", "seconds"],
        [
            ["load 20 reference files + subtraction", f"{load_s:.3f}"],
            ["precompute (entropy, max p, tau), once per search", f"{pre_s:.3f}"],
            ["per lam, search step (score + top-k + ownership), median of 9 lams", f"{per_lam_check:.4f}"],
            ["per lam, full result (+ general set, histograms)", f"{per_lam_full:.4f}"],
            [f"whole automatic search from stats ({len(found.lam_search)} lams; found lam = {found.lam})",
             f"{search:.3f}"],
            ["ternary at fixed lam 0.109375 from stats", f"{fixed:.3f}"],
            ["LAPE from stats", f"{lape:.3f}"],
        ],
    )


# ---- 2. the count reduction ------------------------------------------------------------------------------------
def bench_reduction(reps: int) -> None:
    hidden, layers, inter, vocab, heads, batch, seq = SHAPES["llama-100M"]
    n, h, k = batch * seq, inter, len(LANGS)
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(n, h, generator=gen)
    lang = torch.randint(0, k, (n,), generator=gen)
    mask = torch.rand(n, generator=gen) > 0.3
    onehot = (lang[:, None] == torch.arange(k)) & mask[:, None]
    weights_kn = onehot.T.float().contiguous()
    weights_nk = onehot.float()
    counts_kh = torch.zeros(k, h, dtype=torch.int64)
    counts_hk = torch.zeros(h, k, dtype=torch.int64)
    partial_kh = torch.zeros(k, h)
    active = torch.empty(n, h)

    def used():  # what counting does: 0/1 straight into a float32 scratch, accumulate into float32 counters
        torch.gt(out, 0, out=active)
        partial_kh.addmm_(weights_kn, active)

    def kn_at_nh():
        counts_kh.add_((weights_kn @ (out > 0).to(torch.float32)).to(torch.int64))

    def nh_t_at_nk():
        counts_hk.add_(((out > 0).to(torch.float32).T @ weights_nk).to(torch.int64))

    def index_add():
        counts_kh.index_add_(0, lang, ((out > 0) & mask[:, None]).long())

    linear = torch.nn.Linear(hidden, inter)
    x = torch.randn(n, hidden)
    rows = []
    for name, fn in [("gt into f32 scratch + addmm_ into f32 [K,H] (used)", used),
                     ("[K,N] @ [N,H], added into int64 [K,H]", kn_at_nh),
                     ("[N,H]^T @ [N,K], added into int64 [H,K]", nh_t_at_nk),
                     ("index_add_ of masked int64 rows", index_add),
                     ("for scale: gate_proj alone (Linear 768->2048)", lambda: linear(x))]:
        fn()
        rows.append([name, f"{median_time(fn, reps * 4) * 1e3:.2f}"])
    table(f"Per-layer count reduction at N = {n} tokens, H = {h}, K = {k}", ["formulation", "ms per layer"], rows)


# ---- 3. counting overhead --------------------------------------------------------------------------------------
def bench_overhead(shape: str, reps: int, n_batches: int) -> list[str]:
    model, batch, seq, vocab = build(shape)
    batches = [make_batch(batch, seq, vocab, seed=i) for i in range(n_batches)]
    kwargs = forward_kwargs(model, logits=False)
    pos = accepts_position_ids(model)
    device = torch.device("cpu")

    def plain(logits_to_keep: bool):
        extra = kwargs if logits_to_keep else {"use_cache": False}
        with evaluating(model):
            for b in batches:
                model(**model_inputs(b, device, pos), **extra)

    def counting():
        collect_stats(model, batches, LANGS, progress=False)

    counting(), plain(True)  # warm-up
    base, count, full = [], [], []
    for _ in range(reps):  # interleaved, so drift in machine speed hits both alike
        base.append(median_time(lambda: plain(True), 1))
        count.append(median_time(counting, 1))
        full.append(median_time(lambda: plain(False), 1))
    b, c, f = statistics.median(base), statistics.median(count), statistics.median(full)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return [f"{shape} ({params:.0f}M params, batch {batch} x seq {seq}, {n_batches} batches)", f"{f:.3f}", f"{b:.3f}",
            f"{c:.3f}", f"{c / b:.3f}", f"{c / f:.3f}"]


# ---- 4. memory -------------------------------------------------------------------------------------------------
def memory_child(n_batches: int) -> None:
    """Count n_batches generated on the fly (the probe set itself is never held) and print the peak RSS in MiB."""
    model, batch, seq, vocab = build("memory")
    batches = (make_batch(batch, seq, vocab, seed=i) for i in range(n_batches))
    stats = collect_stats(model, batches, LANGS, progress=False)
    assert int(stats.tokens.sum()) > 0
    # VmHWM (Linux), not ru_maxrss: after fork + exec, ru_maxrss still carries the parent's peak.
    status = Path("/proc/self/status")
    if status.is_file():
        peak_kib = next(line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        print(int(peak_kib) / 1024)
    else:
        import resource

        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def bench_memory() -> None:
    model, batch, seq, vocab = build("memory")
    hidden, layers, inter = SHAPES["memory"][:3]
    counters_kib = (layers * inter * len(LANGS) * (8 + 4) + len(LANGS) * 8) / 1024  # int64 totals + float32 partial
    rows = []
    for n in (10, 100):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], capture_output=True, text=True,
                             check=True)
        rows.append([str(n), f"{float(out.stdout.strip().splitlines()[-1]):.1f}", f"{time.perf_counter() - start:.1f}"])
    table(f"Peak RSS of counting (model hidden {hidden}, {layers} layers, {inter} units, batch {batch} x seq {seq}; "
          f"counters [L, K, H] int64 + float32 = {counters_kib:.0f} KiB)", ["batches", "peak RSS MiB", "wall s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the ~100M-parameter model")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    bench_identification(args.reps)
    bench_reduction(args.reps)
    rows = [bench_overhead("tiny", max(args.reps, 9), n_batches=20)]
    if not args.quick:
        rows.append(bench_overhead("llama-100M", args.reps, n_batches=2))
    table("Counting overhead (seconds per pass over the batches; median of interleaved repetitions)",
          ["model", "forward, full logits", "forward, last logits only", "collect_stats", "ratio vs same forward",
           "ratio vs full-logits forward"], rows)
    bench_memory()


if __name__ == "__main__":
    main()
