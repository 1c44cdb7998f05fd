"""Big stack: throughput and peak memory of segmenting a 64 x 1024 x 1024 uint16 stack.

    python benchmarks/bench_stack.py --data ../shared/data --json out.json

Runs in its own process (run_all.py starts it as a subprocess) so that the
peak resident memory belongs to this job alone. The baseline is the RSS after
the stack exists, the model is loaded and a small warm-up image has been
segmented (so torch's one-off allocations are not counted); the peak is the
larger of ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` and a psutil sampler
(every 5 ms). ``extra`` = peak - baseline, which includes the results
themselves (uint8 semantic + uint32 instances = 320 MiB for this stack).
Post-processing time = CPU seconds of the per-plane watersheds (run in a
worker thread, overlapping the network on the next plane) + the Z stitching
at the end (wall time).

``--dask`` also segments the stack as a dask array chunked (4, 1024, 1024)
whose chunks count how often they are computed, and checks the result is
identical to the numpy one.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from _common import PeakSampler, emit, machine_info, rss, stack


def run(data, planes: int = 64, size: int = 1024, with_dask: bool = False, overlap: bool = True, model_path=None, stack_mode: str = "stitch") -> dict:
    import cellrefine as cr
    from cellrefine import inference, orthogonal

    volume = stack(data, planes, size)
    model = cr.load_model(model_path)
    cr.segment(volume[0, :256, :256], model=model, device="cpu")  # warm-up: torch/oneDNN one-off allocations
    baseline = rss()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    timers = {"watershed_s": 0.0, "stitch_s": 0.0}
    # wraps the public names the pipeline calls (cellrefine.inference's and cellrefine.orthogonal's namespaces), restored afterwards
    postprocess_plane, stitch, postprocess_volume = (
        inference.probabilities_to_instances,
        inference.stitch_planes,
        inference.probabilities_to_instances_3d,
    )

    def timed_plane(*args, **kwargs):  # CPU seconds of the (worker) thread: its wall time is inflated by sharing the cores
        t0 = time.thread_time()
        out = postprocess_plane(*args, **kwargs)
        timers["watershed_s"] += time.thread_time() - t0
        return out

    def timed_stitch(*args, **kwargs):
        t0 = time.perf_counter()
        out = stitch(*args, **kwargs)
        timers["stitch_s"] += time.perf_counter() - t0
        return out

    def timed_volume(*args, **kwargs):  # the 3D watershed runs in the calling thread
        t0 = time.perf_counter()
        out = postprocess_volume(*args, **kwargs)
        timers["watershed_s"] += time.perf_counter() - t0
        return out

    inference.probabilities_to_instances, inference.stitch_planes, orthogonal.probabilities_to_instances_3d = timed_plane, timed_stitch, timed_volume
    try:
        with PeakSampler() as sampler:
            started = time.perf_counter()
            result = cr.segment(volume, model=model, axes="ZYX", device="cpu", overlap_postprocess=overlap, stack_mode=stack_mode)
            seconds = time.perf_counter() - started
    finally:
        inference.probabilities_to_instances, inference.stitch_planes, inference.probabilities_to_instances_3d = (
            postprocess_plane,
            stitch,
            postprocess_volume,
        )
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = max(sampler.peak, maxrss)
    out = {
        "shape": list(volume.shape),
        "dtype": str(volume.dtype),
        "input_mib": volume.nbytes / 2**20,
        "results_mib": (result.semantic.nbytes + result.instances.nbytes) / 2**20,
        "seconds": seconds,
        "mpix_per_s": volume.size / 1e6 / seconds,
        "objects": int(result.instances.max()),
        "baseline_rss_mib": baseline / 2**20,
        "peak_rss_mib": peak / 2**20,
        "extra_peak_mib": (peak - baseline) / 2**20,
        "ru_maxrss_before_mib": maxrss_before / 2**20,
        "overlap_postprocess": overlap,
        "stack_mode": result.stack_mode,
        "watershed_s": timers["watershed_s"],
        "stitch_s": timers["stitch_s"],
        "postprocess_share": (timers["watershed_s"] + timers["stitch_s"]) / seconds,
        "note": "ru_maxrss is the process-lifetime peak; extra_peak uses max(sampled peak, ru_maxrss) - baseline.",
    }
    if with_dask:
        out["dask"] = dask_check(volume, model, result)
    return out


def dask_check(volume, model, reference) -> dict:
    import collections

    import dask.array as da

    import cellrefine as cr

    counts = collections.Counter()
    chunk = 4

    def load(block_id=None):
        z = block_id[0]
        counts[z] += 1
        return volume[z * chunk : (z + 1) * chunk]

    lazy = da.map_blocks(load, dtype=volume.dtype, chunks=((chunk,) * (volume.shape[0] // chunk), (volume.shape[1],), (volume.shape[2],)))
    started = time.perf_counter()
    result = cr.segment(lazy, model=model, axes="ZYX", device="cpu", stack_mode=reference.stack_mode)
    seconds = time.perf_counter() - started
    return {
        "chunks": len(lazy.chunks[0]),
        "chunk_shape": [chunk, volume.shape[1], volume.shape[2]],
        "max_computations_per_chunk": max(counts.values()),
        "total_computations": sum(counts.values()),
        "identical_to_numpy": bool(np.array_equal(result.instances, reference.instances)),
        "seconds": seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--planes", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--dask", action="store_true")
    parser.add_argument("--no-overlap", action="store_true", help="post-process each plane after its network pass (ablation)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--stack-mode", choices=["stitch", "3d", "both"], default="both", help="both: stitch, then 3d in a fresh process")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.stack_mode == "both":  # each mode in its own process, so each peak RSS is its own
        import json
        import subprocess
        import sys
        import tempfile

        result = {"machine": machine_info()}
        for mode in ("stitch", "3d"):
            with tempfile.TemporaryDirectory() as folder:
                out = f"{folder}/{mode}.json"
                command = [sys.executable, __file__, "--data", str(args.data), "--planes", str(args.planes), "--size", str(args.size)]
                command += ["--stack-mode", mode, "--json", out] + (["--dask"] if args.dask else []) + (["--model", args.model] if args.model else [])
                command += ["--no-overlap"] if args.no_overlap else []
                subprocess.run(command, check=True)
                with open(out) as handle:
                    result["stack" if mode == "stitch" else "stack_3d"] = json.load(handle)["stack"]
        result["stack_3d"]["time_vs_stitch"] = result["stack_3d"]["seconds"] / result["stack"]["seconds"]
        emit(result, args.json)
        return
    result = {"machine": machine_info(), "stack": run(args.data, args.planes, args.size, args.dask, not args.no_overlap, args.model, args.stack_mode)}
    emit(result, args.json)


if __name__ == "__main__":
    main()
