"""Where an eager prefill's time goes: the model ``decode.py`` builds (ternary and/or dense bf16;
the ternary one with int8 head and embedding, fused projections and folded norms), one prompt
without a cache, timed and then profiled with torch.profiler (GPU kernel time summed
per kernel name). Also prints the host's issue time: the time until the model's call returns,
before synchronizing; where it nears the wall time, the prefill is bound by the host.

    python benchmarks/e2e/profile_prefill.py --device cuda --shape llama-8b --prompt 2048 \\
        --variants ternary,dense --top 20
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import decode  # noqa: E402  (the same model builder and shapes)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--shape", default="llama-8b", choices=sorted(decode.SHAPES))
    p.add_argument("--layers", type=int, default=0, help="layers (default: the shape's)")
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--prompt", type=int, default=2048, help="prompt tokens")
    p.add_argument("--variants", default="ternary,dense")
    p.add_argument("--runs", type=int, default=3, help="timed prefills before the profiled one")
    p.add_argument("--top", type=int, default=20, help="kernels listed per variant")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    build = argparse.Namespace(device=args.device, shape=args.shape, layers=args.layers,
                               vocab=args.vocab, seed=args.seed, head="int8", embedding="int8",
                               fuse="on", fold_norms="on", huge_pages="on",
                               attention="decode-safe")
    activity = ProfilerActivity.CUDA if args.device == "cuda" else ProfilerActivity.CPU
    for variant in args.variants.split(","):
        model, _ = decode.build_model(build, variant)
        gen = torch.Generator().manual_seed(args.seed + 1)
        prompt = torch.randint(3, args.vocab, (1, args.prompt), generator=gen).to(args.device)
        with torch.inference_mode():
            for _ in range(2):  # first-call costs
                model(input_ids=prompt, use_cache=False, logits_to_keep=1)
            decode.sync(args.device)
            issue, wall = [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                model(input_ids=prompt, use_cache=False, logits_to_keep=1)
                t1 = time.perf_counter()
                decode.sync(args.device)
                issue.append(1e3 * (t1 - t0))
                wall.append(1e3 * (time.perf_counter() - t0))
            with profile(activities=[activity]) as prof:
                model(input_ids=prompt, use_cache=False, logits_to_keep=1)
                decode.sync(args.device)
        events = prof.key_averages()
        own = (lambda e: e.self_device_time_total) if args.device == "cuda" else \
            (lambda e: e.self_cpu_time_total)
        total = sum(own(e) for e in events)
        print(f"== {variant}: wall {[round(t, 1) for t in wall]} ms, issued in "
              f"{[round(t, 1) for t in issue]} ms; "
              f"{'kernels' if args.device == 'cuda' else 'ops'} {total / 1e3:.1f} ms", flush=True)
        for e in sorted(events, key=lambda e: -own(e))[:args.top]:
            print(f"  {own(e) / 1e3:8.2f} ms  {e.count:5d}  {e.key[:110]}")
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
