"""Policies in C, 1 thread, one interleaved run: nmrl's generated C vs emx-onnx-cgen's C vs ONNX Runtime.

For each actor shape (the trained policies' sizes Hopper 11-256-256-3, HalfCheetah 17-256-256-6,
Ant 105-256-256-8, and HalfCheetah's at widths 1024 and 2048) the script exports real nmrl policy
files (fresh actors masked 2:4, 1:4 and 1:8 by magnitude) and times, at batch 1 and batch 256:

- nmrl's C (``nmrl.export.c_source``): the 2:4 file with every layer dense (``kernels="dense"``:
  nmrl's own dense C of the same actor), and the 2:4, 1:4 and 1:8 files with their N:M kernels;
- nmrl's int8 C of the int8 files nmrl's quantizer writes from the 2:4 and 1:8 files (the ``ort``
  recipe, its first layer fp32 as that recipe keeps it unless measured faster; calibrated on the
  benchmark's random observations): int8 dense (the 2:4 int8 file, every layer dense), 2:4, 1:8;
- emx-onnx-cgen's C of the same 2:4 ONNX file (a dense ONNX-to-C generator; its best settings:
  no heap temporaries, weights inline, ``restrict``, the batch pinned), built with and without
  ``-ffast-math``;
- ONNX Runtime (CPU, 1 thread) on the 2:4 file.

Every C variant is compiled with the same compiler and ``-O3 -march=native`` (nmrl's C needs no
``-ffast-math``; emx-onnx-cgen's is built both ways) and timed by one generated C harness, a
``main()`` linking all generated files (no ctypes: its call overhead is not the kernel's). Before
timing, each variant's actions are checked against ONNX Runtime on the same observations. Timing:
``--rounds`` rounds; each round runs the harness once (each variant, in an order rotated per round:
warm-up, then samples of back-to-back calls) and then ONNX Runtime the same way, so a slow spell of a
shared machine hits every variant alike. The table gives the median sample (us per call); the
ratios are nmrl 2:4 against ONNX Runtime, against emx-onnx-cgen's faster build, and against nmrl's
dense C, 1:8 against nmrl's dense C, and int8 2:4 against fp32 2:4. The int8 variants are
checked against their int8 file under ONNX Runtime without graph optimizations (the file's own
Q/DQ ops: ONNX Runtime's fused integer GEMMs round some activations one level apart, see
tests/test_c_int8.py). The CPU's name and SIMD instruction sets are printed: the
generated C picks AVX-512, AVX2+FMA or NEON at compile time. Weight bytes: what the compiled objects
hold (their read-only data, ``size -A``) and the nm-packed file's size.

emx-onnx-cgen runs from its own environment (``pip install emx-onnx-cgen`` there; ``--emx``
names the executable, default ``.bench-venv/bin/emx-onnx-cgen``, else the one on PATH); its code
generation at width 2048 takes about a minute per batch size: ``--emx-max-width 1024`` skips it.

Run: python benchmarks/c_runtime.py [--quick] [--rounds 7] [--out bench_results/c_runtime]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from machine import cpu_name

from nmrl.deploy.c_backend import find_compiler
from nmrl.export.c_source import generate_c, nm_packed_bytes
from nmrl.export.observations import random_observations
from nmrl.export.onnx_export import build_policy_onnx, finish_graph, save_onnx
from nmrl.export.quantize import quantize_int8
from nmrl.sparsity import sparsify
from nmrl.sparsity.pattern import NMPattern
from nmrl.train.networks import Actor

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"Hopper": (11, 3), "HalfCheetah": (17, 6), "Ant": (105, 8)}
CELLS = [("Hopper", 256), ("HalfCheetah", 256), ("Ant", 256), ("HalfCheetah", 1024), ("HalfCheetah", 2048)]
PATTERNS = ("2:4", "1:4", "1:8")
BATCHES = (1, 256)
FLAGS = ("-O3", "-march=native")
EMX_SETTINGS = ("--large-temp-threshold", "0", "--large-weight-threshold", "0", "--restrict-arrays")
"""emx-onnx-cgen's fastest settings found: stack temporaries (no malloc per call), weights inline, restrict."""
POOL = 512
"""Observations the harness cycles through (two distinct batch-256 inputs)."""
INT8_PATTERNS = ("2:4", "1:8")
COLUMNS = ("ort", "emx", "emx fast-math", "nmrl dense", "nmrl 2:4", "nmrl 1:4", "nmrl 1:8")
INT8_COLUMNS = ("nmrl int8 dense", "nmrl int8 2:4", "nmrl int8 1:8")
TOLERANCE = {"emx fast-math": 1e-4}
"""Max action difference to ONNX Runtime; fp32 sums in another order (fast-math reassociates more)."""
DEFAULT_TOLERANCE = 1e-5


@dataclass
class Variant:
    """One generated C entry point of the harness: ``column`` at ``batch``."""

    column: str
    batch: int
    call: str
    """C statement running one call on ``o`` (observations) into ``a`` (actions)."""
    reference: Path
    """The ONNX file whose actions it must give."""


@dataclass
class Cell:
    shape: str
    width: int
    obs: int
    act: int
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    """pattern -> ONNX file ('int8 2:4' etc.: the int8 file of that pattern)"""
    objects: list[Path] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    prototypes: list[str] = field(default_factory=list)
    weight_bytes: dict[str, int] = field(default_factory=dict)
    """column -> weight bytes in its object; 'nm-packed 2:4' etc. -> the nm-packed file's."""
    samples: dict[tuple[str, int], list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.shape} {self.obs}-{self.width}-{self.width}-{self.act}"


# ------------------------------------------------------------------------------------------
# The machine


def simd_sets() -> str:
    """The SIMD instruction sets Linux reports (what -march=native lets the compiler use)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = set(next(line for line in lines if line.startswith(("flags", "Features"))).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
              "avx512_bf16", "avx_vnni", "amx_int8", "asimd", "asimddp", "sve")  # fmt: skip
    found = [flag for flag in wanted if flag in flags]
    if not any(flag.startswith("avx512") for flag in found) and "avx2" in found:
        found.append("(no AVX-512)")
    return " ".join(found) or "none of the listed"


def compiler_version(cc: str) -> str:
    result = subprocess.run([*cc.split(), "--version"], capture_output=True, text=True)
    return (result.stdout.splitlines() or ["unknown compiler"])[0]


# ------------------------------------------------------------------------------------------
# Building


def big_stack() -> None:
    """The harness's stack limit raised to the hard limit: emx-onnx-cgen keeps its temporaries on the
    stack (its no-malloc setting), 4 x batch x width floats (8 MiB at batch 256, width 2048)."""
    resource.setrlimit(resource.RLIMIT_STACK, (resource.getrlimit(resource.RLIMIT_STACK)[1],) * 2)


def run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, preexec_fn=big_stack)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout or f"exit status {result.returncode}").strip().splitlines()[-5:]
        sys.exit(f"{what} failed ({' '.join(command[:3])} ...):\n" + "\n".join(tail))


def export_actors(cell: Cell) -> None:
    """One nmrl policy file per pattern, written by nmrl's exporter (trace, verify, metadata)."""
    for index, name in enumerate(PATTERNS):
        pattern = NMPattern.parse(name)
        torch.manual_seed(cell.width + cell.obs + index)
        bounds = [-1.0] * cell.act, [1.0] * cell.act
        actor = Actor(cell.obs, cell.act, *bounds, hidden=(cell.width, cell.width))
        sparsify(actor, pattern)
        model, _ = build_policy_onnx(actor.eval(), cell.obs, cell.act, pattern, {"env_id": f"{cell.shape}-v5"})
        path = cell.folder / f"actor_{pattern.n}_{pattern.m}.onnx"
        save_onnx(model, path)
        cell.files[name] = path
        if name in INT8_PATTERNS:
            calibration = random_observations(cell.obs, 256, seed=index, scale=1.0)
            quantized, report = quantize_int8(model, calibration, "random observations", "ort", "fp32")
            metadata = {"dtype": "int8", "io_dtype": "fp32", "quantization": report.to_metadata()}
            finish_graph(quantized, pattern, metadata)
            path = cell.folder / f"actor_{pattern.n}_{pattern.m}.int8.onnx"
            save_onnx(quantized, path)
            cell.files[f"int8 {name}"] = path


def constant_bytes(obj: Path) -> int:
    """Bytes of the object's read-only data sections (``size -A``: .rodata*): the weights, indices
    and biases as compiled (a compiler may fold small arrays into vector constants without a symbol,
    so symbols are not counted)."""
    listing = subprocess.run(["size", "-A", str(obj)], capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in listing.splitlines() if line.startswith(".rodata"))


def nmrl_sources(cell: Cell, cc: str, pool: ThreadPoolExecutor) -> list:
    """Generate nmrl's C of each variant and start compiling it (returns the compile futures)."""
    jobs = []
    plan = [("nmrl dense", "2:4", "dense", "nmrl_dense")]
    plan += [(f"nmrl {name}", name, "auto", f"nmrl_{name.replace(':', '_')}") for name in PATTERNS]
    plan += [("nmrl int8 dense", "int8 2:4", "dense", "nmrl_i8_dense")]
    plan += [(f"nmrl int8 {n}", f"int8 {n}", "auto", f"nmrl_i8_{n.replace(':', '_')}") for n in INT8_PATTERNS]
    for column, pattern, kernels, prefix in plan:
        model = onnx.load(cell.files[pattern])
        source = generate_c(model, prefix, kernels)
        c_path, _ = source.write(cell.folder / f"{prefix}.c")
        obj = c_path.with_suffix(".o")
        cell.objects.append(obj)
        cell.headers.append(f"{prefix}.h")
        if kernels == "auto":
            cell.weight_bytes[f"nm-packed {pattern}"] = nm_packed_bytes(source.program)
        elif pattern == "2:4":
            cell.weight_bytes["fp32 dense"] = sum(layer.weight.nbytes for layer in source.program.layers)
        for batch in BATCHES:
            call = f"{prefix}_act(o, a);" if batch == 1 else f"{prefix}_act_batch({batch}, o, a);"
            cell.variants.append(Variant(column, batch, call, cell.files[pattern]))
        command = [*cc.split(), "-std=c99", "-Wall", "-Werror", *FLAGS, "-c", str(c_path), "-o", str(obj)]
        jobs.append((column, obj, pool.submit(run, command, f"compiling {c_path.name}")))
    return jobs


def emx_sources(cell: Cell, cc: str, emx: str, pool: ThreadPoolExecutor) -> list:
    """emx-onnx-cgen's C of the 2:4 file, one per batch size (it pins the batch), each built with
    and without -ffast-math; every symbol but the entry point is made local (emx's weight arrays
    are global and share names across its files)."""

    def build(batch: int) -> None:
        name = f"emx_b{batch}"
        c_path = cell.folder / f"{name}.c"
        command = [emx, "compile", *EMX_SETTINGS, "--input-dim", f"batch={batch}", "--model-name", name]
        run([*command, str(cell.files["2:4"]), str(c_path)], f"emx-onnx-cgen at batch {batch}")
        for suffix, extra in (("", ()), ("_fm", ("-ffast-math",))):
            obj = cell.folder / f"{name}{suffix}.o"
            run([*cc.split(), "-std=c99", *FLAGS, *extra, "-c", str(c_path), "-o", str(obj)], f"compiling {name}")
            if suffix:
                run(["objcopy", "--redefine-sym", f"{name}={name}{suffix}", str(obj)], "objcopy")
            run(["objcopy", "--keep-global-symbol", f"{name}{suffix}", str(obj)], "objcopy")

    jobs = []
    for batch in BATCHES:
        future = pool.submit(build, batch)
        for suffix, column in (("", "emx"), ("_fm", "emx fast-math")):
            name = f"emx_b{batch}{suffix}"
            obj = cell.folder / f"{name}.o"
            cell.objects.append(obj)
            shape = f"const float obs[restrict {batch}][{cell.obs}], float action[restrict {batch}][{cell.act}]"
            cell.prototypes.append(f"void {name}({shape});")
            cast = f"{name}((const float (*)[{cell.obs}])o, (float (*)[{cell.act}])a);"
            cell.variants.append(Variant(column, batch, cast, cell.files["2:4"]))
            # Every build is waited for; the weight bytes are read from the batch-1 objects.
            jobs.append((column if batch == 1 else None, obj, future))
    return jobs


HARNESS = r"""/* Generated by benchmarks/c_runtime.py: times the linked policies (not part of any policy). */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
@HEADERS@
@PROTOTYPES@
#define OBS @OBS@
#define ACT @ACT@
#define POOL @POOL@
typedef void (*run_fn)(const float *o, float *a);
@RUNNERS@
static const struct { const char *name; int batch; run_fn run; } variants[] = {
@TABLE@
};
#define VARIANTS ((int)(sizeof variants / sizeof variants[0]))
static float obs[POOL * OBS], act[POOL * ACT];

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* check OBS.bin OUT.bin: each variant's actions on the first 256 observations, in table order.
 * time OBS.bin ROUND SAMPLES BLOCK_NS BUDGET_NS: per variant (order rotated by ROUND) a warm-up,
 * then up to SAMPLES samples (at least 3, within BUDGET_NS) of back-to-back calls lasting about
 * BLOCK_NS; prints name, batch, calls per sample and each sample's ns per call. */
int main(int argc, char **argv)
{
    FILE *in;
    int v, i;
    if (argc < 3 || !(in = fopen(argv[2], "rb")) || fread(obs, sizeof obs, 1, in) != 1) return 2;
    fclose(in);
    if (argv[1][0] == 'c' && argc == 4) {
        FILE *out = fopen(argv[3], "wb");
        if (!out) return 3;
        for (v = 0; v < VARIANTS; ++v) {
            for (i = 0; i < 256; i += variants[v].batch)
                variants[v].run(obs + (size_t)i * OBS, act + (size_t)i * ACT);
            if (fwrite(act, sizeof(float) * 256 * ACT, 1, out) != 1) return 3;
        }
        return fclose(out) == 0 ? 0 : 3;
    }
    if (argv[1][0] != 't' || argc != 7) return 2;
    {
        int round = atoi(argv[3]), samples = atoi(argv[4]);
        double block = atof(argv[5]), budget = atof(argv[6]);
        for (v = 0; v < VARIANTS; ++v) {
            int which = (v + round) % VARIANTS, batch = variants[which].batch, inputs = POOL / batch;
            run_fn fn = variants[which].run;
            long calls = 0, inner, s, n;
            double began = now_ns(), per_call, spent;
            while (calls < 10 && (calls == 0 || now_ns() - began < 2e6)) {
                fn(obs + (size_t)(calls % inputs) * batch * OBS, act);
                ++calls;
            }
            per_call = (now_ns() - began) / (double)calls;
            inner = (long)(block / per_call) > 1 ? (long)(block / per_call) : 1;
            n = (long)(budget / (per_call * (double)inner));
            n = n < 3 ? 3 : (n > samples ? samples : n);
            printf("%s\t%d\t%ld", variants[which].name, batch, inner);
            for (s = 0; s < n; ++s) {
                double t0 = now_ns();
                for (i = 0; i < inner; ++i) fn(obs + (size_t)((s * inner + i) % inputs) * batch * OBS, act);
                spent = now_ns() - t0;
                printf("\t%.1f", spent / (double)inner);
            }
            printf("\n");
        }
    }
    return 0;
}
"""


def write_harness(cell: Cell) -> Path:
    runners = [f"static void run{i}(const float *o, float *a) {{ {v.call} }}" for i, v in enumerate(cell.variants)]
    table = [f'    {{"{v.column}", {v.batch}, run{i}}},' for i, v in enumerate(cell.variants)]
    text = HARNESS
    for key, value in (
        ("@HEADERS@", "\n".join(f'#include "{header}"' for header in cell.headers)),
        ("@PROTOTYPES@", "\n".join(cell.prototypes)),
        ("@OBS@", str(cell.obs)),
        ("@ACT@", str(cell.act)),
        ("@POOL@", str(POOL)),
        ("@RUNNERS@", "\n".join(runners)),
        ("@TABLE@", "\n".join(table)),
    ):
        text = text.replace(key, value)
    path = cell.folder / "harness.c"
    path.write_text(text)
    return path


def build_cell(cell: Cell, cc: str, emx: str | None, pool: ThreadPoolExecutor) -> Path:
    """Export the actors, generate and compile every C variant, link the harness."""
    cell.folder.mkdir(parents=True, exist_ok=True)
    export_actors(cell)
    jobs = nmrl_sources(cell, cc, pool)
    if emx is not None:
        jobs += emx_sources(cell, cc, emx, pool)
    for column, obj, future in jobs:
        future.result()
        if column is not None:
            cell.weight_bytes[column] = constant_bytes(obj)
    harness = write_harness(cell)
    program = cell.folder / "harness"
    run([*cc.split(), "-std=c99", *FLAGS, "-I", str(cell.folder), str(harness), *map(str, cell.objects),
         "-o", str(program), "-lm"], "linking the harness")  # fmt: skip
    return program


# ------------------------------------------------------------------------------------------
# Checking and timing


def ort_session(path: Path, optimized: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimized:  # the file's own ops, as the C computes them (no fused integer GEMMs)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def check_cell(cell: Cell, program: Path, obs: np.ndarray) -> float:
    """Every variant's actions against ONNX Runtime on the same observations; the largest error."""
    out = cell.folder / "check.bin"
    run([str(program), "check", str(cell.folder / "obs.bin"), str(out)], "the harness's check")
    actions = np.fromfile(out, np.float32).reshape(len(cell.variants), 256, cell.act)
    worst = 0.0
    references: dict[Path, np.ndarray] = {}
    for variant, got in zip(cell.variants, actions, strict=True):
        if variant.reference not in references:
            session = ort_session(variant.reference, optimized=variant.column not in INT8_COLUMNS)
            references[variant.reference] = session.run(None, {session.get_inputs()[0].name: obs[:256]})[0]
        error = float(np.abs(got - references[variant.reference]).max())
        if error > TOLERANCE.get(variant.column, DEFAULT_TOLERANCE):
            what = f"{cell.label}: {variant.column} at batch {variant.batch}"
            sys.exit(f"{what} differs from ONNX Runtime by {error:.2g}")
        worst = max(worst, error) if variant.column not in TOLERANCE else worst
    return worst


def time_ort(cell: Cell, session: ort.InferenceSession, obs: np.ndarray, samples: int, block_ns: float,
             budget_ns: float) -> None:  # fmt: skip
    """ONNX Runtime timed as the harness times C: warm-up, then samples of back-to-back calls."""
    name = session.get_inputs()[0].name
    for batch in BATCHES:
        inputs = [np.ascontiguousarray(obs[i : i + batch]) for i in range(0, POOL, batch)]
        began, calls = time.perf_counter_ns(), 0
        while calls < 10 and (calls == 0 or time.perf_counter_ns() - began < 2e6):
            session.run(None, {name: inputs[calls % len(inputs)]})
            calls += 1
        per_call = (time.perf_counter_ns() - began) / calls
        inner = max(1, int(block_ns / per_call))
        count = min(samples, max(3, int(budget_ns / (per_call * inner))))
        found = cell.samples.setdefault(("ort", batch), [])
        for s in range(count):
            t0 = time.perf_counter_ns()
            for i in range(inner):
                session.run(None, {name: inputs[(s * inner + i) % len(inputs)]})
            found.append((time.perf_counter_ns() - t0) / inner)


def time_cell(cell: Cell, program: Path, rounds: int, samples: int, block_ns: float, budget_ns: float) -> None:
    obs = np.fromfile(cell.folder / "obs.bin", np.float32).reshape(POOL, cell.obs)
    session = ort_session(cell.files["2:4"])
    for round_index in range(rounds):
        command = [str(program), "time", str(cell.folder / "obs.bin"), str(round_index), str(samples)]
        timing = [*command, str(block_ns), str(budget_ns)]
        result = subprocess.run(timing, capture_output=True, text=True, check=True, preexec_fn=big_stack)
        for line in result.stdout.splitlines():
            column, batch, _, *values = line.split("\t")
            cell.samples.setdefault((column, int(batch)), []).extend(float(value) for value in values)
        time_ort(cell, session, obs, samples, block_ns, budget_ns)


# ------------------------------------------------------------------------------------------
# Reporting


def medians(cell: Cell) -> dict[tuple[str, int], float]:
    return {key: float(np.median(values)) / 1e3 for key, values in cell.samples.items()}


def print_table(cells: list[Cell]) -> None:
    shown = [column for column in COLUMNS + INT8_COLUMNS if any((column, 1) in cell.samples for cell in cells)]
    header = ["actor", "batch", *shown, "2:4 vs ort", "2:4 vs emx best", "2:4 vs dense", "1:8 vs dense"]
    header.append("int8 2:4 vs 2:4")
    rows = []
    for cell in cells:
        us = medians(cell)
        for batch in BATCHES:

            def get(column: str, b: int = batch, us: dict = us) -> float:
                return us.get((column, b), float("nan"))

            emx_best = min(get("emx"), get("emx fast-math"))
            sparse = get("nmrl 2:4")
            dense = get("nmrl dense")
            ratios = [get("ort") / sparse, emx_best / sparse, dense / sparse, dense / get("nmrl 1:8")]
            ratios.append(sparse / get("nmrl int8 2:4"))
            rows.append([cell.label, str(batch), *(f"{get(c):.2f}" for c in shown), *(f"{r:.2f}x" for r in ratios)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |")
    print("(us per call, median of the samples; nan: not run)")


def print_sizes(cells: list[Cell]) -> None:
    print("\nWeight bytes (KiB): the compiled objects' constant data (.rodata: weights, indices, biases),")
    print("the nm-packed file's weights (values + bit-packed indices) and the fp32 weights")
    columns = ["fp32 dense", "nmrl dense", "emx"]
    columns += [*(f"nmrl {p}" for p in PATTERNS), *(f"nm-packed {p}" for p in PATTERNS)]
    columns += [*INT8_COLUMNS, *(f"nm-packed int8 {p}" for p in INT8_PATTERNS)]
    header = ["actor", *columns]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for cell in cells:
        values = [f"{cell.weight_bytes[c] / 1024:.0f}" if c in cell.weight_bytes else "-" for c in columns]
        print("| " + " | ".join([cell.label, *values]) + " |")


def plot(cells: list[Cell], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install 'nmrl[plots]')")
        return
    fig, axes = plt.subplots(1, len(BATCHES), figsize=(6 * len(BATCHES), 4.5))
    for axis, batch in zip(axes, BATCHES, strict=True):
        labels = [cell.label.replace(" ", "\n", 1) for cell in cells]
        shown = [c for c in COLUMNS + INT8_COLUMNS if any((c, batch) in cell.samples for cell in cells)]
        for i, column in enumerate(shown):
            values = [medians(cell).get((column, batch), np.nan) for cell in cells]
            offsets = np.arange(len(cells)) + (i - (len(shown) - 1) / 2) * 0.8 / len(shown)
            axis.bar(offsets, values, 0.8 / len(shown), label=column)
        axis.set_xticks(np.arange(len(cells)), labels, fontsize=8)
        axis.set_yscale("log")
        axis.set_ylabel("us per call (median)")
        axis.set_title(f"batch {batch}")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Policies in C, 1 thread: {cpu_name()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


# ------------------------------------------------------------------------------------------


def find_emx(given: str | None) -> str | None:
    for candidate in [given] if given else [str(ROOT / ".bench-venv" / "bin" / "emx-onnx-cgen"), "emx-onnx-cgen"]:
        found = shutil.which(candidate)
        if found:
            return found
    if given:
        sys.exit(f"--emx {given}: not an executable")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Hopper 256 only, 3 rounds (a minute)")
    parser.add_argument("--width", type=int, help="only this width (Hopper's shape if no cell has it)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--samples", type=int, default=15, help="samples per variant per round (at most)")
    parser.add_argument("--block-us", type=float, default=100.0, help="back-to-back calls per sample last about this")
    parser.add_argument("--budget-ms", type=float, default=40.0, help="time per variant per round (at least 3 samples)")
    parser.add_argument("--emx", help="the emx-onnx-cgen executable (default: .bench-venv/bin/, else PATH)")
    parser.add_argument("--no-emx", action="store_true", help="leave emx-onnx-cgen out")
    parser.add_argument("--emx-max-width", type=int, default=2048, help="no emx-onnx-cgen above this width")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results" / "c_runtime")
    args = parser.parse_args()

    cc = find_compiler()
    emx = None if args.no_emx else find_emx(args.emx)
    if emx is None and not args.no_emx:
        sys.exit("emx-onnx-cgen not found: python -m venv .bench-venv && .bench-venv/bin/pip install emx-onnx-cgen "
                 "(or --emx PATH, or --no-emx)")  # fmt: skip
    cells_wanted = [("Hopper", 256)] if args.quick else CELLS
    if args.width is not None:
        cells_wanted = [cell for cell in cells_wanted if cell[1] == args.width] or [("Hopper", args.width)]
    rounds = 3 if args.quick else args.rounds
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"CPU: {cpu_name()}; SIMD: {simd_sets()}")
    print(f"compiler: {compiler_version(cc)}; flags {' '.join(FLAGS)} (emx also with -ffast-math); 1 thread")
    print(f"ONNX Runtime {ort.__version__} (1 thread); emx-onnx-cgen: {emx or 'not run'}")
    cells = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for shape, width in cells_wanted:
            obs_dim, act_dim = SHAPES[shape]
            cell = Cell(shape, width, obs_dim, act_dim, args.out / f"{shape}_{width}")
            began = time.perf_counter()
            program = build_cell(cell, cc, emx if width <= args.emx_max_width else None, pool)
            obs = random_observations(obs_dim, POOL, seed=width, scale=1.0)
            obs.tofile(cell.folder / "obs.bin")
            error = check_cell(cell, program, obs)
            print(f"{cell.label}: built in {time.perf_counter() - began:.0f} s; every variant acts as ONNX Runtime "
                  f"(max |diff| {error:.1e} without fast-math)", flush=True)  # fmt: skip
            cells.append(cell)
        for round_cell in cells:
            began = time.perf_counter()
            program = round_cell.folder / "harness"
            time_cell(round_cell, program, rounds, args.samples, args.block_us * 1e3, args.budget_ms * 1e6)
            print(f"{round_cell.label}: timed in {time.perf_counter() - began:.0f} s", flush=True)
    print()
    print_table(cells)
    print_sizes(cells)
    results = {
        "cpu": cpu_name(),
        "simd": simd_sets(),
        "cells": [
            {"actor": c.label, "us": {f"{k}@{b}": v for (k, b), v in medians(c).items()}, "bytes": c.weight_bytes}
            for c in cells
        ],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(cells, args.out / "c_runtime.png")


if __name__ == "__main__":
    main()
