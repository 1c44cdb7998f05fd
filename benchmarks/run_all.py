"""Run the whole benchmark suite and write a Markdown + JSON report.

    python benchmarks/run_all.py --data ../shared/data --out benchmarks/results
    python benchmarks/run_all.py --data ../shared/data --out /tmp/quick --quick     # ~4 min smoke run

Each benchmark runs in its own Python process (so peak-memory figures belong
to one job, and one failure does not stop the others); their JSON lands in
``--out`` next to ``report.json`` (everything, plus the machine) and
``report.md`` (the tables of docs/benchmarks.md). About 8 minutes on a
2-core CPU machine. See docs/benchmarks.md for what each figure means.

Benchmarks: ``inference`` (bench_inference.py), ``stack`` (bench_stack.py,
memory + dask), ``accuracy`` (bench_accuracy.py), ``finetune``
(bench_finetune.py), ``ui`` (ui_responsiveness.py under ``xvfb-run -a``),
``ablations`` (bench_ablations.py: what each optimisation buys).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine_info, other_cpu_load, run_python  # noqa: E402

BENCHMARKS = ("inference", "stack", "accuracy", "finetune", "ui", "ablations")


def commands(args) -> dict:
    data = str(Path(args.data).resolve())
    out = Path(args.out)
    model = ["--model", args.model] if args.model else []
    quick = args.quick
    return {
        "inference": (
            ["bench_inference.py", "--data", data, "--repeats", "2" if quick else "3", "--json", out / "inference.json", *model],
            900,
            False,
        ),
        "stack": (
            ["bench_stack.py", "--data", data, "--planes", "16" if quick else "64", "--dask", "--json", out / "stack.json", *model],
            900,
            False,
        ),
        "accuracy": (
            ["bench_accuracy.py", "--data", data, *(["--limit", "10"] if quick else []), "--json", out / "accuracy.json", *model],
            900,
            False,
        ),
        "finetune": (
            ["bench_finetune.py", "--data", data, *(["--steps", "30"] if quick else []), "--json", out / "finetune.json", *model],
            1200,
            False,
        ),
        "ui": (["ui_responsiveness.py", "--data", data, "--seconds", "8" if quick else "20", "--json", out / "ui.json"], 300, True),
        "ablations": (
            [
                "bench_ablations.py",
                "--data",
                data,
                "--rounds",
                "2" if quick else "4",
                *(["--no-thp"] if quick else []),
                "--json",
                out / "ablations.json",
                *model,
            ],
            900,
            False,
        ),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data", help="development data folder (nuclei/val, em/train, em/val)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--only", nargs="*", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="smaller stack, fewer repeats and steps (a smoke run; not for the report)")
    parser.add_argument("--model", default=None, help="model file/folder (default: the bundled model)")
    parser.add_argument("--merge", action="store_true", help="keep the other results of an existing report.json in --out (re-run only --only)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "quick": args.quick,
        "machine": machine_info(),
        "other_cpu_load_before": other_cpu_load(),
        "results": {},
        "errors": {},
    }
    previous = out / "report.json"
    if args.merge and previous.is_file():
        old = json.loads(previous.read_text())
        report["results"] = {k: {"date": old.get("date"), **v} for k, v in old.get("results", {}).items() if k not in args.only}
        report["errors"] = {k: v for k, v in old.get("errors", {}).items() if k not in args.only}
        report["merged_into"] = {"date": old.get("date"), "command": old.get("command"), "rerun": list(args.only)}
    started = time.perf_counter()
    for name, (arguments, timeout, needs_display) in commands(args).items():
        if name not in args.only:
            continue
        if needs_display and not shutil.which("xvfb-run"):
            if not os.environ.get("DISPLAY"):
                report["errors"][name] = "skipped: needs xvfb-run or a display"
                continue
            needs_display = False
        print(f"== {name}: {' '.join(map(str, arguments))}", flush=True)
        t0 = time.perf_counter()
        load = _LoadMeter()
        try:
            process = run_python([HERE / arguments[0], *arguments[1:]], timeout=timeout, xvfb=needs_display)
        except Exception as error:
            report["errors"][name] = repr(error)
            continue
        seconds = time.perf_counter() - t0
        other_load = load.other()
        for line in process.stdout.splitlines():
            if not line.startswith((" ", "{", "}", "]", "[")) and line.strip():
                print("   " + line, flush=True)
        json_path = Path(arguments[arguments.index("--json") + 1])
        if process.returncode != 0 or not json_path.is_file():
            report["errors"][name] = f"exit {process.returncode}: {process.stderr[-3000:]}"
            print(f"   FAILED ({report['errors'][name][:300]})", flush=True)
            continue
        result = json.loads(json_path.read_text())
        result.pop("machine", None)
        report["results"][name] = {**result, "wall_s": seconds, "other_cpu_load": other_load, "date": report["date"]}
        print(f"   done in {seconds:.0f} s (other processes used {100 * (other_load or 0):.0f} % of the CPUs meanwhile)", flush=True)
    report["total_s"] = time.perf_counter() - started
    report["other_cpu_load_after"] = other_cpu_load()
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "report.md").write_text(markdown(report))
    print(f"wrote {out / 'report.md'} and {out / 'report.json'} ({report['total_s']:.0f} s)")
    return 1 if report["errors"] else 0


class _LoadMeter:
    """Share of the machine's CPU time used by processes other than this suite while a benchmark ran."""

    def __init__(self):
        import resource

        try:
            import psutil
        except ImportError:
            self.start = None
            return
        self.psutil, self.resource = psutil, resource
        self.start = (self._busy(), self._ours(), time.perf_counter())

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return t.user + t.system + t.nice + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def _ours(self) -> float:
        children = self.resource.getrusage(self.resource.RUSAGE_CHILDREN)
        me = self.resource.getrusage(self.resource.RUSAGE_SELF)
        return children.ru_utime + children.ru_stime + me.ru_utime + me.ru_stime

    def other(self):
        if self.start is None:
            return None
        busy, ours, started = self.start
        wall = time.perf_counter() - started
        other = (self._busy() - busy) - (self._ours() - ours)
        return round(max(0.0, other / (wall * (self.psutil.cpu_count() or 1))), 3)


def _f(value, digits=2, unit=""):
    if value is None:
        return "–"
    return f"{value:.{digits}f}{unit}"


def markdown(report: dict) -> str:
    m = report["machine"]
    r = report["results"]
    loads = {k: v.get("other_cpu_load") for k, v in r.items()}
    lines = [
        "# CellRefine benchmark report",
        "",
        f"- Date: {report['date']}; command: `{report['command']}`{' (quick run)' if report['quick'] else ''}; suite time {report['total_s'] / 60:.1f} min"
        + (
            f" (re-ran {', '.join(report['merged_into']['rerun'])} and kept the other results; when each was measured: "
            + ", ".join(f"{k} {v.get('date', '?')}" for k, v in r.items())
            + ")"
            if report.get("merged_into")
            else ""
        ),
        f"- Machine: {m['cpu']}, {m['affinity_cpus']} CPUs available, {m['memory_gib']} GiB; torch threads {m['torch_threads']}; "
        f"native CPU bf16: {m['cpu_bf16_native']}",
        f"- Versions: cellrefine {m['cellrefine']}, torch {m['torch']}, numpy {m['numpy']}, scipy {m['scipy']}, scikit-image {m['scikit-image']}, Python {m['python']}",
        f"- Device: CPU. GPU: {m['gpu'] or 'none available — no GPU figures in this report'}",
        f"- CPU used by other processes: {_f(100 * (report['other_cpu_load_before'] or 0), 0)} % before, "
        f"{_f(100 * (report['other_cpu_load_after'] or 0), 0)} % after; during each benchmark: "
        + ", ".join(f"{k} {_f(100 * (v or 0), 0)} %" for k, v in loads.items())
        + " (figures are only comparable on a quiet machine)",
        "",
    ]
    if "inference" in r:
        inf = r["inference"]["inference"]
        peaks = inf["matmul_peak_gflops"]
        lines += [
            "## Inference throughput (CPU)",
            "",
            f"Network: {inf['flops_per_pixel']['counted'] / 1e3:.1f} kFLOP per pixel (FlopCounterMode; analytic count "
            f"{inf['flops_per_pixel']['analytic'] / 1e3:.1f}). Matmul peak (4096², best of 5): float32 {peaks['float32']:.0f} GFLOP/s, "
            f"bfloat16 {peaks['bfloat16']:.0f} GFLOP/s.",
            "",
            "| image | pipeline `cr.segment` | bare forward, fast network | bare forward, float32 as loaded | naive plugin loop | pipeline / bare fast | pipeline / naive |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in inf["sizes"].items():
            lines.append(
                f"| {name} | {_f(e['pipeline']['mpix_per_s'])} MPix/s | {_f(e['bare_forward_fast']['mpix_per_s'])} MPix/s ({e['bare_forward_fast']['dtype']}) | "
                f"{_f(e['bare_forward_float32']['mpix_per_s'])} MPix/s | {_f(e['naive']['mpix_per_s'])} MPix/s | "
                f"{_f(100 * e['ratios']['pipeline_over_bare_fast'], 0)} % | {_f(e['ratios']['pipeline_over_naive'], 2)}× |"
            )
        lines += [
            "",
            "| image | GFLOP/s bare fast (share of its matmul peak) | GFLOP/s bare float32 (share) | GFLOP/s network inside the pipeline (share) | "
            "time in network / post-processing / other | halo pixels |",
            "|---|---|---|---|---|---|",
        ]
        for name, e in inf["sizes"].items():
            b = e["pipeline"]["breakdown_fastest_run"]
            s = e["share_of_matmul_peak"]
            lines.append(
                f"| {name} | {_f(e['gflops']['bare_forward_fast'], 0)} ({_f(100 * s['bare_forward_fast'], 0)} %) | "
                f"{_f(e['gflops']['bare_forward_float32'], 0)} ({_f(100 * s['bare_forward_float32'], 0)} %) | "
                f"{_f(e['gflops']['pipeline_network'], 0)} ({_f(100 * s['pipeline_network'], 0)} %) | "
                f"{_f(100 * b['network_s'] / b['total_s'], 0)} % / {_f(100 * b['postprocess_s'] / b['total_s'], 0)} % / {_f(100 * b['other_s'] / b['total_s'], 0)} % | "
                f"+{_f(100 * e['pipeline']['halo_pixel_overhead'], 0)} % |"
            )
        cuda = inf.get("cuda")
        if cuda:
            lines += ["", f"GPU ({cuda['gpu']}):", "", "| image | pipeline | bare forward | pipeline / bare |", "|---|---|---|---|"]
            for name, e in cuda["sizes"].items():
                lines.append(
                    f"| {name} | {e['pipeline_mpix_per_s']:.1f} MPix/s | {e['bare_forward_mpix_per_s']:.1f} MPix/s | {100 * e['pipeline_over_bare']:.0f} % |"
                )
        else:
            lines += ["", "GPU: none on this machine, so there are no GPU figures (the CUDA path runs the same code under autocast)."]
        lines.append("")
    if "stack" in r:
        st = r["stack"]["stack"]
        lines += [
            "## Big stack: throughput and memory",
            "",
            f"`cr.segment` of a {' x '.join(map(str, st['shape']))} {st['dtype']} stack ({st['input_mib']:.0f} MiB): "
            f"{st['seconds']:.1f} s = {st['mpix_per_s']:.2f} MPix/s, {st['objects']} 3D objects. "
            f"Peak RSS {st['peak_rss_mib']:.0f} MiB over a baseline of {st['baseline_rss_mib']:.0f} MiB: "
            f"**{st['extra_peak_mib']:.0f} MiB extra**, of which the results are {st['results_mib']:.0f} MiB. "
            f"Post-processing: watersheds {st.get('watershed_s', 0):.1f} CPU s (in a thread, overlapping the network) + Z stitching "
            f"{st.get('stitch_s', 0):.1f} s = {100 * st.get('postprocess_share', 0):.0f} % of the wall time.",
        ]
        if "stack_3d" in r["stack"]:
            s3 = r["stack"]["stack_3d"]
            lines.append(
                f'3D mode (`stack_mode="3d"`, three views fused, 3D watershed) on the same stack: {s3["seconds"]:.1f} s = '
                f"**{s3['time_vs_stitch']:.2f}x the stitching mode's time**, {s3['objects']} 3D objects, "
                f"**{s3['extra_peak_mib']:.0f} MiB extra** peak RSS (results {s3['results_mib']:.0f} MiB); 3D watershed {s3['watershed_s']:.1f} s."
            )
        if "dask" in st:
            d = st["dask"]
            lines.append(
                f"As a dask array in {d['chunks']} chunks of {' x '.join(map(str, d['chunk_shape']))}: every chunk computed at most "
                f"{d['max_computations_per_chunk']} times (once for the percentile subsample, once for its planes), "
                f"result identical to numpy: {d['identical_to_numpy']}, {d['seconds']:.1f} s."
            )
        lines.append("")
    if "accuracy" in r:
        a = r["accuracy"]["accuracy"]
        lines += [
            "## Accuracy of the fast path (nuclei/val)",
            "",
            f"{a['images']} images; float32 vs default precision ({a['fast_dtype']}).",
            "",
            "| | F1@0.5 | F1@0.75 | F1@0.9 | mean F1 (0.5:0.95) |",
            "|---|---|---|---|---|",
            f"| float32 | {a['f1_float32'][0]:.4f} | {a['f1_float32'][5]:.4f} | {a['f1_float32'][8]:.4f} | {a['mean_f1_float32']:.4f} |",
            f"| {a['fast_dtype']} (default) | {a['f1_fast'][0]:.4f} | {a['f1_fast'][5]:.4f} | {a['f1_fast'][8]:.4f} | {a['mean_f1_fast']:.4f} |",
            "",
            f"Largest F1 drop over IoU 0.5…0.95: {a['largest_f1_drop']:+.4f}; semantic pixels differing: {100 * a['semantic_pixels_differing']:.3f} %.",
            "",
        ]
    if "finetune" in r:
        f = r["finetune"]["finetune"]
        lines += [
            "## Fine-tuning (EM, CPU)",
            "",
            f"{len(f['train_images'])} ISBI-2012 slices, default settings ({f['steps']} steps, batch {f['settings']['batch_size']}, crop {f['settings']['crop_size']}): "
            f"{f['finetune_seconds']:.0f} s, **{f['steps_per_second']:.2f} steps/s**; em/val F1@0.5 {f['val_f1_50_before']:.3f} → {f['val_f1_50_after']:.3f}. "
            f"**F1@0.5 ≥ {f['target_f1_50']}** first after {_f(f['seconds_to_target'], 1, ' s')} ({f['steps_to_target']} steps), "
            f"and at every later checkpoint from {_f(f.get('seconds_to_stay_above_target'), 1, ' s')} ({f.get('steps_to_stay_above_target')} steps) on.",
            "",
            "| step | training s | em/val F1@0.5 (calibrated) | uncalibrated |",
            "|---|---|---|---|",
        ]
        for c in f["checkpoints"]:
            lines.append(
                f"| {c['step']}{' (final)' if c.get('final') else ''} | {c['train_s']:.1f} | {c['val_f1_50']:.3f} | {_f(c.get('val_f1_50_uncalibrated'), 3)} |"
            )
        s = f["step_split"]
        lines += [
            "",
            f"Step time {s['step_s'] * 1000:.0f} ms; forward + backward + AdamW alone {s['compute_s'] * 1000:.0f} ms "
            f"(**{min(100, 100 * s['compute_share_of_step']):.0f} %** of a step"
            f"{'; the step is no slower than forward/backward alone' if s['compute_share_of_step'] >= 0.99 else ''}); "
            f"drawing + augmenting a batch alone {s['batch_s'] * 1000:.0f} ms "
            f"(overlapped by the prefetch thread; it would be {100 * s['batch_share_if_serial']:.0f} % of a serial step).",
            "",
        ]
    if "ui" in r:
        u = r["ui"]["ui"]
        lines += [
            "## GUI responsiveness while fine-tuning",
            "",
            f"20 ms QTimer on the GUI thread (Qt under Xvfb), fine-tuning in a thread on a {u['image_shape'][0]}² image ({u['steps_done']} steps in {u['training_seconds']:.0f} s).",
            "",
            "| phase | ticks | delay p50 | p95 | max |",
            "|---|---|---|---|---|",
        ]
        for phase in ("idle", "training", "training_after_first_step"):
            p = u.get(phase, {})
            lines.append(
                f"| {phase.replace('_', ' ')} | {p.get('ticks', 0)} | {_f(p.get('p50_ms'), 1, ' ms')} | {_f(p.get('p95_ms'), 1, ' ms')} | {_f(p.get('max_ms'), 1, ' ms')} |"
            )
        lines.append("")
    if "ablations" in r:
        ab = r["ablations"]["ablations"]
        net = ab["network_1152"]
        lines += [
            "## Ablations",
            "",
            f"Network alone on one {net['tile'][0]}² tile (interleaved rounds, median):",
            "",
            "| variant | s | MPix/s |",
            "|---|---|---|",
        ]
        for name, e in net["variants"].items():
            lines.append(f"| {name} | {e['median_s']:.3f} | {e['mpix_per_s']:.2f} |")
        lines += [
            "",
            "Network alone against the tile size (best of rounds):",
            "",
            "| core tile | tile with halo | s | core MPix/s | tile MPix/s |",
            "|---|---|---|---|---|",
        ]
        for core, e in ab.get("tile_sizes", {}).items():
            lines.append(f"| {core}² | {e['tile']}² | {e['s']:.3f} | {e['core_mpix_per_s']:.2f} | {e['tile_mpix_per_s']:.2f} |")
        lines += ["", "| other | s (median) |", "|---|---|"]
        for name, e in ab["batching_576"].items():
            lines.append(f"| {name} (576² tiles) | {e['median_s']:.3f} |")
        for name, e in ab.get("training_step", {}).items():
            lines.append(f"| fine-tuning step (4 x 192²): {name} | {e['median_s']:.3f} |")
        for name, e in ab["pipeline_2048"]["variants"].items():
            lines.append(f"| pipeline 2048²: {name} | {e['median_s']:.3f} ({e['mpix_per_s']:.2f} MPix/s) |")
        w = ab["watershed_2048"]
        for name, e in w["variants"].items():
            lines.append(f"| watershed 2048²: {name} | {e['median_s']:.3f} |")
        for name, e in (ab.get("thp_2048") or {}).items():
            if isinstance(e, dict):
                lines.append(f"| pipeline 2048², {name} (child process) | {e['median_s']:.3f} ({e['mpix_per_s']:.2f} MPix/s) |")
        lines += [
            "",
            f"Watershed results identical: {w['identical']} (foreground {100 * w['foreground_share']:.0f} % of pixels, seeds {100 * w['seed_share']:.0f} %).",
            "",
        ]
    if report["errors"]:
        lines += ["## Errors", ""] + [f"- {k}: `{v[:500]}`" for k, v in report["errors"].items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
