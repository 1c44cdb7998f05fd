"""Ablations: what each inference optimisation buys (kept and dropped ideas alike).

    python benchmarks/bench_ablations.py --data ../shared/data --json out.json

Network variants are timed interleaved (round-robin, median of ``--rounds``)
on one 1152² tile (a 1024² plane plus its 64-pixel halo), so a busy machine
hurts them all alike:

* ``float32 as loaded`` (NCHW), ``+ channels-last``, ``+ BatchNorm folded``,
  ``+ fused conv/ReLU (oneDNN)``, ``+ split skip concat`` (float32),
* the same steps in bfloat16, and ``bf16 autocast`` on the unfolded network,
* ``torch.jit.freeze + optimize_for_inference`` (float32),
* batching: 4 tiles of 576² in one forward vs one at a time.

One fine-tuning step (4 x 192²): float32 NCHW vs channels-last vs bf16
autocast. Pipeline variants on a 2048² image: core tile 768 (default) vs 1024 vs 2048
(one tile); float32; one vs two torch threads. Network alone against the
tile size (bfloat16, one tile of core + 2 x 64 halo per side). Post-processing: skimage's watershed vs
``seeded_watershed``. And ``THP_MEM_ALLOC_ENABLE=1`` (transparent huge pages
for torch's CPU allocator; an environment variable read when torch starts,
so a user setting) on the pipeline, measured in a child process.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import numpy as np
from _common import emit, machine_info, mosaic, run_python


def interleaved(variants: dict, rounds: int) -> dict:
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: {"median_s": statistics.median(t), "min_s": min(t)} for name, t in times.items()}


def network_variants(model, size: int, rounds: int) -> dict:
    import torch

    x = torch.rand(1, 1, size, size)
    plain = model.network
    channels_last = copy.deepcopy(plain).to(memory_format=torch.channels_last)

    def fast(dtype, fused: bool, split: bool):
        network = plain.for_inference(dtype=dtype, fused=fused, split_skip_concat=split)
        return lambda: network(x).float()

    def autocast_unfolded():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            channels_last(x.contiguous(memory_format=torch.channels_last)).float()

    variants = {
        "float32 as loaded (NCHW)": lambda: plain(x),
        "float32 channels-last": lambda: channels_last(x.contiguous(memory_format=torch.channels_last)),
        "float32 + BatchNorm folded": fast(torch.float32, False, False),
        "float32 + fused conv/ReLU": fast(torch.float32, True, False),
        "float32 + split skip concat": fast(torch.float32, True, True),
        "bf16 autocast, unfolded": autocast_unfolded,
        "bf16 + BatchNorm folded": fast(torch.bfloat16, False, False),
        "bf16 + fused conv/ReLU": fast(torch.bfloat16, True, False),
        "bf16 + split skip concat (default)": fast(torch.bfloat16, True, True),
    }
    try:
        traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(copy.deepcopy(plain).eval(), x)))
        variants["float32 torch.jit.freeze + optimize_for_inference"] = lambda: traced(x)
    except Exception as error:
        print(f"jit variant failed: {error}", file=sys.stderr)
    with torch.inference_mode():
        result = interleaved(variants, rounds)
    for entry in result.values():
        entry["mpix_per_s"] = size * size / 1e6 / entry["median_s"]
    return {"tile": [size, size], "variants": result}


def tile_sizes(model, rounds: int, cores=(384, 512, 640, 768, 1024, 1280, 1536, 2048)) -> dict:
    import torch

    network = model.network.for_inference(dtype=torch.bfloat16 if _bf16() else torch.float32)
    halo = network.halo
    out = {}
    with torch.inference_mode():
        for core in cores:
            x = torch.rand(1, 1, core + 2 * halo, core + 2 * halo)
            network(x)
            best = min(_time(lambda: network(x).float()) for _ in range(max(2, rounds // 2)))  # noqa: B023 - called at once
            out[str(core)] = {
                "tile": core + 2 * halo,
                "s": best,
                "core_mpix_per_s": core * core / 1e6 / best,
                "tile_mpix_per_s": (core + 2 * halo) ** 2 / 1e6 / best,
            }
    return out


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def training_variants(model, rounds: int) -> dict:
    """One fine-tuning step (batch 4 x 192², weighted CE + Dice, AdamW) in the layouts/precisions tried."""
    import torch

    from cellrefine.training import freeze_batchnorm, weighted_loss

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 192, 192, generator=generator)
    semantic = torch.randint(0, 3, (4, 192, 192), generator=generator)
    weights = torch.rand(4, 192, 192, generator=generator)

    def make(channels_last: bool, bf16: bool, fused: bool):
        network = copy.deepcopy(model.network).train()
        freeze_batchnorm(network)
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4, fused=fused)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = network(images)
            loss = weighted_loss(logits, semantic, weights, 0.5)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    variants = {
        "float32 NCHW, foreach AdamW (before)": make(False, False, False),
        "float32 channels-last, fused AdamW": make(True, False, True),
    }
    if _bf16():
        variants["bf16 autocast channels-last, fused AdamW (default)"] = make(True, True, True)
    return interleaved(variants, rounds)


def batching(model, rounds: int) -> dict:
    import torch

    network = model.network.for_inference(dtype=torch.bfloat16 if _bf16() else torch.float32)
    tiles = torch.rand(4, 1, 576, 576)
    with torch.inference_mode():
        result = interleaved(
            {"4 tiles, one forward each": lambda: [network(t[None]) for t in tiles], "4 tiles in one batch": lambda: network(tiles)}, rounds
        )
    return result


def _bf16() -> bool:
    from cellrefine.device import cpu_bf16_supported

    return cpu_bf16_supported()


def pipeline_variants(model, image, rounds: int) -> dict:
    import torch

    import cellrefine as cr

    threads = torch.get_num_threads()

    def with_threads(n, **kwargs):
        def run():
            torch.set_num_threads(n)
            try:
                cr.segment(image, model=model, device="cpu", **kwargs)
            finally:
                torch.set_num_threads(threads)

        return run

    variants = {
        "default (tile 768, bf16)": with_threads(threads),
        "tile 1024": with_threads(threads, tile_size=1024),
        "tile 2048 (one tile)": with_threads(threads, tile_size=2048),
        "precision float32": with_threads(threads, precision="float32"),
    }
    if threads > 1:
        variants["1 torch thread"] = with_threads(1)
    result = interleaved(variants, rounds)
    for entry in result.values():
        entry["mpix_per_s"] = image.size / 1e6 / entry["median_s"]
    return {"image": list(image.shape), "torch_threads": threads, "variants": result}


def watershed_variants(model, image, rounds: int) -> dict:
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    import cellrefine as cr
    from cellrefine.postprocess import PostprocessSettings, seeded_watershed

    probabilities = cr.segment(image, model=model, device="cpu", return_probabilities=True).probabilities.astype(np.float32)
    settings = PostprocessSettings(**model.config.get("postprocess", {}))
    foreground = probabilities[0] < 1 - settings.foreground_threshold
    seeds, _ = ndi.label((probabilities[1] > settings.seed_threshold) & foreground)
    result = interleaved(
        {
            "skimage watershed": lambda: watershed(probabilities[2], markers=seeds, mask=foreground),
            "seeded_watershed (interior seeds masked)": lambda: seeded_watershed(probabilities[2], seeds, foreground),
        },
        rounds,
    )
    same = np.array_equal(watershed(probabilities[2], markers=seeds, mask=foreground), seeded_watershed(probabilities[2], seeds, foreground))
    return {
        "image": list(image.shape),
        "identical": bool(same),
        "foreground_share": float(foreground.mean()),
        "seed_share": float((seeds > 0).mean()),
        "variants": result,
    }


THP_CHILD = """
import json, sys, time
sys.path.insert(0, {here!r})
from _common import mosaic
import cellrefine as cr
model = cr.load_model()
image = mosaic({data!r}, 2048, seed=2048)
cr.segment(image, model=model, device="cpu")
times = []
for _ in range({rounds}):
    t = time.perf_counter(); cr.segment(image, model=model, device="cpu"); times.append(time.perf_counter() - t)
print(json.dumps(sorted(times)))
"""


def transparent_huge_pages(data, rounds: int) -> dict:
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    code = THP_CHILD.format(here=here, data=str(Path(data).resolve()), rounds=rounds)
    out = {}
    for value in ("0", "1", "0", "1"):  # alternate, twice each
        process = run_python(["-c", code], timeout=600, env={"THP_MEM_ALLOC_ENABLE": value})
        if process.returncode != 0:
            return {"error": process.stderr[-1000:]}
        out.setdefault(value, []).extend(json.loads(process.stdout.strip().splitlines()[-1]))
    return {
        f"THP_MEM_ALLOC_ENABLE={k}": {"median_s": statistics.median(v), "min_s": min(v), "mpix_per_s": 2048**2 / 1e6 / statistics.median(v)}
        for k, v in out.items()
    }


def run(data, rounds: int = 5, model_path=None, with_thp: bool = True) -> dict:
    import cellrefine as cr

    model = cr.load_model(model_path)
    image = mosaic(data, 2048, seed=2048)
    out = {
        "network_1152": network_variants(model, 1152, rounds),
        "batching_576": batching(model, rounds),
        "tile_sizes": tile_sizes(model, rounds),
        "training_step": training_variants(model, rounds),
        "pipeline_2048": pipeline_variants(model, image, max(2, rounds // 2)),
        "watershed_2048": watershed_variants(model, image, rounds),
    }
    if with_thp:
        out["thp_2048"] = transparent_huge_pages(data, 2)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-thp", action="store_true")
    parser.add_argument("--model", default=None)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), "ablations": run(args.data, args.rounds, args.model, not args.no_thp)}
    emit(result, args.json)


if __name__ == "__main__":
    main()
