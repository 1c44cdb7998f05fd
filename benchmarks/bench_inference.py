"""Inference throughput: the ``cellrefine.segment`` pipeline against the bare network and a naive loop.

    python benchmarks/bench_inference.py --data ../shared/data --json out.json

For each image size (default 512² and 2048², uint16 mosaics of real BBBC039
nuclei) it measures, in one run on the same images:

* ``pipeline``: ``cellrefine.segment(image)`` with default settings (normalise,
  tile, network, watershed), with the time inside the network and inside
  post-processing recorded separately;
* ``bare_forward_fast``: the same inference network (the ``InferenceUNet``
  copy the pipeline runs: folded BatchNorm, channels-last, bf16 where the CPU
  has it) on one untiled, already normalised tensor; pipeline / this = the
  pipeline-overhead ratio;
* ``bare_forward_float32``: the bundled network as loaded (float32, NCHW,
  ``torch.inference_mode``) on one untiled tensor;
* ``naive``: what a plain plugin does: float32, ``model.eval()``,
  ``torch.no_grad()``, whole image, softmax + argmax, then
  ``skimage.segmentation.watershed`` with the same seeds.

It also counts the network's FLOPs (``torch.utils.flop_counter``) and
measures the machine's matmul peak (float32 and bfloat16 ``torch.matmul`` of
4096² matrices), giving GFLOP/s achieved and the share of the peak.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import emit, machine_info, mosaic, timed


def matmul_peak(dtype_name: str, n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a large square ``torch.matmul`` (best of ``repeats``)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    best = min(_seconds(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def network_flops_per_pixel(network, size: int = 256) -> dict:
    """FLOPs per input pixel: counted by FlopCounterMode and derived analytically (2 x MACs of every conv)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(torch.zeros(1, network.in_channels, size, size))
    counted = counter.get_total_flops() / size**2
    analytic = 0.0
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            level = _level_of(network, module)
            analytic += 2 * module.in_channels * module.out_channels * module.kernel_size[0] * module.kernel_size[1] / 4**level
        elif isinstance(module, torch.nn.ConvTranspose2d):
            level = _level_of(network, module)  # output at this level
            analytic += 2 * module.in_channels * module.out_channels / 4**level
    return {"counted": counted, "analytic": analytic}


def _level_of(network, module) -> int:
    for level, block in enumerate(network.encoders):
        if any(m is module for m in block.modules()):
            return level
    if any(m is module for m in network.bottleneck.modules()):
        return network.depth
    for k, (up, block) in enumerate(zip(network.upsamplers, network.decoders)):
        level = network.depth - 1 - k
        if module is up or any(m is module for m in block.modules()):
            return level
    return 0


class _TimedNetwork:
    """Wraps the pipeline's inference network to accumulate forward seconds and pixels."""

    def __init__(self, network):
        self.network = network
        self.seconds = 0.0
        self.pixels = 0
        for name in ("grid", "halo", "out_channels", "in_channels"):
            setattr(self, name, getattr(network, name))

    def __call__(self, x):
        started = time.perf_counter()
        y = self.network(x)
        y = y.float() if y.dtype != x.dtype else y  # materialise inside the timed region
        self.seconds += time.perf_counter() - started
        self.pixels += x.shape[0] * x.shape[-2] * x.shape[-1]
        return y


def instrumented_segment(image, model, **kwargs) -> dict:
    """Run ``cellrefine.segment`` once with timers on the network and the post-processing."""
    import cellrefine as cr
    from cellrefine import inference

    state = {"network": None, "post_s": 0.0}
    # wraps the public names the pipeline calls (cellrefine.inference's namespace), restored afterwards
    make_network, postprocess_plane = inference.inference_network, inference.probabilities_to_instances

    def timed_network(*args, **kw):
        network, amp = make_network(*args, **kw)
        state["network"] = _TimedNetwork(network)
        return state["network"], amp

    def timed_postprocess(*args, **kw):
        started = time.perf_counter()
        out = postprocess_plane(*args, **kw)
        state["post_s"] += time.perf_counter() - started
        return out

    inference.inference_network, inference.probabilities_to_instances = timed_network, timed_postprocess
    try:
        started = time.perf_counter()
        result = cr.segment(image, model=model, device="cpu", **kwargs)
        total = time.perf_counter() - started
    finally:
        inference.inference_network, inference.probabilities_to_instances = make_network, postprocess_plane
    return {
        "total_s": total,
        "network_s": state["network"].seconds,
        "network_pixels": state["network"].pixels,
        "postprocess_s": state["post_s"],
        "other_s": total - state["network"].seconds - state["post_s"],  # reading, normalising, padding, softmax/arg-max, stitching
        "objects": int(result.instances.max()),
    }


def naive_segment(image: np.ndarray, model) -> np.ndarray:
    """The reference a plain plugin would write: float32, eval, no_grad, whole image, skimage watershed."""
    import torch
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential, watershed

    from cellrefine.postprocess import PostprocessSettings

    settings = PostprocessSettings(**model.config.get("postprocess", {}))
    lo, hi = np.percentile(image, (1.0, 99.8))
    x = ((image.astype(np.float32) - lo) / max(hi - lo, 1e-6)).astype(np.float32)
    network = model.network
    network.eval()
    with torch.no_grad():
        logits = network(torch.from_numpy(x)[None, None])
        probabilities = torch.softmax(logits, dim=1)[0].numpy()
    semantic = probabilities.argmax(axis=0).astype(np.uint8)  # noqa: F841 - a plugin shows it
    foreground = probabilities[0] < 1 - settings.foreground_threshold
    seeds, _ = ndi.label((probabilities[1] > settings.seed_threshold) & foreground)
    instances = watershed(probabilities[2], markers=seeds, mask=foreground)
    sizes = np.bincount(instances.ravel())
    instances[(sizes < settings.min_size)[instances]] = 0
    return relabel_sequential(instances)[0]


def bench_size(model, image: np.ndarray, flops_per_pixel: float, repeats: int) -> dict:
    import torch

    from cellrefine.reader import PlaneReader
    from cellrefine.tiling import inference_network

    pixels = image.size
    mpix = pixels / 1e6
    device = torch.device("cpu")
    result = {"shape": list(image.shape), "megapixels": round(mpix, 3)}

    import cellrefine as cr

    pipeline = timed(lambda: cr.segment(image, model=model, device="cpu"), repeats=repeats)
    breakdown = [instrumented_segment(image, model) for _ in range(max(1, repeats - 1))]
    best = min(breakdown, key=lambda b: b["total_s"])
    result["pipeline"] = {**pipeline, "mpix_per_s": mpix / pipeline["median_s"], "breakdown_fastest_run": best}
    result["pipeline"]["postprocess_share"] = best["postprocess_s"] / best["total_s"]
    result["pipeline"]["network_share"] = best["network_s"] / best["total_s"]
    result["pipeline"]["halo_pixel_overhead"] = best["network_pixels"] / pixels - 1

    plane = PlaneReader(image, "YX", model).plane(0, 0)
    x = torch.from_numpy(plane)[None]
    fast, amp = inference_network(model.network, device)
    with torch.inference_mode():
        bare_fast = timed(lambda: fast(x).float(), repeats=repeats)
        bare_f32 = timed(lambda: model.network(x), repeats=repeats)
    result["bare_forward_fast"] = {**bare_fast, "mpix_per_s": mpix / bare_fast["median_s"], "dtype": str(fast.dtype).replace("torch.", "")}
    result["bare_forward_float32"] = {**bare_f32, "mpix_per_s": mpix / bare_f32["median_s"]}
    naive = timed(lambda: naive_segment(image, model), repeats=max(1, repeats - 1))
    result["naive"] = {**naive, "mpix_per_s": mpix / naive["median_s"]}

    gflop = flops_per_pixel * pixels / 1e9
    result["gflop_per_image"] = gflop
    result["gflops"] = {
        "bare_forward_fast": gflop / bare_fast["min_s"],
        "bare_forward_float32": gflop / bare_f32["min_s"],
        "pipeline_network": flops_per_pixel * best["network_pixels"] / 1e9 / best["network_s"],
    }
    result["ratios"] = {
        "pipeline_over_bare_fast": result["pipeline"]["mpix_per_s"] / result["bare_forward_fast"]["mpix_per_s"],
        "pipeline_over_bare_float32": result["pipeline"]["mpix_per_s"] / result["bare_forward_float32"]["mpix_per_s"],
        "pipeline_over_naive": result["pipeline"]["mpix_per_s"] / result["naive"]["mpix_per_s"],
    }
    return result


def bench_cuda(model, data, sizes, repeats: int) -> dict:
    """Pipeline and bare forward on the GPU (only when torch sees CUDA; not exercised on CPU-only machines)."""
    import torch

    import cellrefine as cr
    from cellrefine.reader import PlaneReader
    from cellrefine.tiling import inference_network

    device = torch.device("cuda")
    out = {"gpu": torch.cuda.get_device_name(0), "sizes": {}}
    for size in sizes:
        image = mosaic(data, size, seed=size)
        pipeline = timed(lambda: cr.segment(image, model=model, device="cuda"), repeats=repeats)  # noqa: B023 - timed at once
        network, amp = inference_network(model.network, device)
        x = torch.from_numpy(PlaneReader(image, "YX", model).plane(0, 0))[None].to(device)

        def bare(network=network, x=x, amp=amp):
            with torch.inference_mode(), torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                network(x).float()
            torch.cuda.synchronize()

        forward = timed(bare, repeats=repeats)
        mpix = image.size / 1e6
        out["sizes"][f"{size}x{size}"] = {
            "pipeline_mpix_per_s": mpix / pipeline["median_s"],
            "bare_forward_mpix_per_s": mpix / forward["median_s"],
            "pipeline_over_bare": forward["median_s"] / pipeline["median_s"],
            "autocast": str(amp),
        }
    return out


def run(data, sizes=(512, 2048), repeats: int = 3, model_path=None) -> dict:
    import torch

    import cellrefine as cr

    model = cr.load_model(model_path)
    flops = network_flops_per_pixel(model.network)
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    out = {"flops_per_pixel": flops, "matmul_peak_gflops": peaks, "sizes": {}}
    for size in sizes:
        image = mosaic(data, size, seed=size)
        entry = bench_size(model, image, flops["counted"], repeats)
        fast_dtype = entry["bare_forward_fast"]["dtype"]
        peak = peaks["bfloat16" if fast_dtype == "bfloat16" else "float32"]
        entry["share_of_matmul_peak"] = {
            "bare_forward_fast": entry["gflops"]["bare_forward_fast"] / peak,
            "bare_forward_float32": entry["gflops"]["bare_forward_float32"] / peaks["float32"],
            "pipeline_network": entry["gflops"]["pipeline_network"] / peak,
        }
        out["sizes"][f"{size}x{size}"] = entry
        print(
            f"inference {size}²: pipeline {entry['pipeline']['mpix_per_s']:.2f} MPix/s, bare fast {entry['bare_forward_fast']['mpix_per_s']:.2f}, "
            f"bare float32 {entry['bare_forward_float32']['mpix_per_s']:.2f}, naive {entry['naive']['mpix_per_s']:.2f}",
            flush=True,
        )
    out["torch_threads"] = torch.get_num_threads()
    out["cuda"] = bench_cuda(model, data, sizes, repeats) if torch.cuda.is_available() else None
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = {"machine": machine_info(), "inference": run(args.data, args.sizes, args.repeats, args.model)}
    emit(result, args.json, echo=not args.json)


if __name__ == "__main__":
    main()
