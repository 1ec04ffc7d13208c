"""Compile the Triton kernels for Hopper (sm_90) ahead of time, without a GPU.

The interpreter accepts programs the compiler rejects (tl.dot tiles under 16, layouts, shared
memory), so configurations the launch code produces (fastinr.ops.config.LaunchConfig and
render_meta, for widths up to 1024 after concatenation, every activation, fp32 / tf32 / bf16 /
fp16 dots; see aot_cases for the selection) are compiled here with triton.compile for sm_90, and
ptxas -v (with triton's options) reports registers and spills. Those cases declare every int as a
plain i32 (what ragged sizes get); the variants the seed's workloads really launch, where Triton
specialises ints divisible by 16 and equal to 1, are captured from the launchers themselves
(tests/aot_launches.py) and compiled as they would be on a GPU. Fails on a compile error,
on shared memory above the H100/H200 per-block limit, or on any register spill. The compiler runs
in a subprocess without TRITON_INTERPRET (conftest sets it).

Run directly for the table: `PYTHONPATH=. python tests/test_triton_aot.py [--only=SUBSTRINGS]`. The GPU image has
Triton 3.6: `bash tests/aot_triton36.sh` runs the same compile under it (a side virtual
environment), and so does this test when FASTINR_AOT_TRITON36=1 (CI sets it).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

SHARED_LIMIT = 232448        # 227 KiB: the most shared memory one block may use on sm_90
WIDTHS = (8, 24, 40, 64, 256, 512, 1024)


def _dot_configs():
    import triton.language as tl

    from fastinr.ops.config import LaunchConfig
    return {"fp32": LaunchConfig(tl.float32, "ieee"), "tf32": LaunchConfig(tl.float32, "tf32"),
            "bf16": LaunchConfig(tl.bfloat16, "ieee"), "fp16": LaunchConfig(tl.float16, "ieee")}


def _render_specs():
    from fastinr.contract import DecoderSpec

    def spec(hidden, concat, layers, freqs, act="gelu", out=3):
        return DecoderSpec(102, out, hidden, concat, layers, (7.0, 17.0, 3.0, 11.0)[:freqs], True,
                           act, "sigmoid")
    return {"seed 256 2x2": spec(256, (False, False), 2, 2),
            "512 concat 2x1": spec(512, (True, False), 1, 4),
            "40 3x3 mixed": spec(40, (True, False, True), 3, 0),
            "64 2x0": spec(64, (False, True), 0, 1, out=64),
            "8 1x1": spec(8, (False,), 1, 1, out=1)}


def aot_cases():
    """(label, kernel name, meta) for each configuration to compile; meta holds the constexprs
    plus num_warps / num_stages, exactly as the launchers build them.

    Per dot dtype and kernel, the largest and the smallest tiles the launch code picks for widths
    up to 1024 (register pressure grows with the tile; tl.dot's limits bite on the smallest),
    with the heaviest epilogue (gelu, BatchNorm prologue, concat); every activation once in the
    forward and backward kernels; a few decoder shapes of the one-pass render."""
    from fastinr.activations import ACTIVATION_CODES
    from fastinr.ops.embed import DZ_BLOCK, embed_meta
    from fastinr.ops.render import render_meta

    cases = []
    gelu = ACTIVATION_CODES["gelu"]
    shapes = {(w, w) for w in WIDTHS} | {(w, n) for w in WIDTHS for n in (3, 64)}
    for dot_name, config in _dot_configs().items():
        for kernel, method in (("linear_fwd", config.linear), ("linear_dx", config.linear_dx),
                               ("linear_dw", config.linear_dw)):
            metas = sorted((method(k, n) for k, n in shapes),
                           key=lambda m: m["BLOCK_M"] * m["BLOCK_N"] * m["BLOCK_K"])
            flags = dict(HAS_NORM=True)
            if kernel == "linear_fwd":
                flags.update(RES_MODE=2, STORE_Z=True)   # the heaviest epilogue
            for size, meta in (("largest", metas[-1]), ("smallest", metas[0])):
                cases.append((f"{dot_name} {size} gelu", kernel, dict(meta, ACT=gelu, **flags)))
            if dot_name == "bf16" and kernel != "linear_dw":
                for act_name, act in ACTIVATION_CODES.items():
                    cases.append((f"{dot_name} {act_name}", kernel,
                                   dict(metas[-1], ACT=act, **flags)))
            if kernel == "linear_fwd" and dot_name in ("fp32", "bf16"):
                for res_mode, has_norm, store_z in ((0, False, False), (1, False, True)):
                    cases.append((f"{dot_name} res={res_mode} norm={has_norm}", kernel,
                                  dict(metas[-1], ACT=gelu, HAS_NORM=has_norm,
                                       RES_MODE=res_mode, STORE_Z=store_z)))
        for freqs, hidden in ((0, 8), (8, 512)):
            meta = embed_meta((1.0,) * freqs, gelu, hidden, config)
            label = f"{dot_name} gelu F={freqs} hidden={hidden}"
            cases.append((label, "embed_bwd", meta))
            for offset in (False, True):   # without and with a local latent grid's input offset
                cases.append((label + " offset" * offset, "embed_fwd", dict(meta, HAS_OFFSET=offset)))
        for label, spec in _render_specs().items():
            if dot_name in ("fp32", "bf16") or label == "seed 256 2x2":
                cases.append((f"{dot_name} {label}", "render", render_meta(spec, config)))
    for act_name, act in ACTIVATION_CODES.items():   # the input offset's gradient (float32 only)
        cases.append((f"fp32 {act_name}", "embed_dz", dict(ACT=act, BLOCK=DZ_BLOCK, num_warps=4, num_stages=1)))
    # Modulation (elementwise, float32): every activation with FiLM at the widest tile, and shift
    # and the narrowest tile with gelu.
    modulate = _dot_configs()["fp32"].modulate
    for act_name, act in ACTIVATION_CODES.items():
        for film in (True, False) if act_name == "gelu" else (True,):
            for meta in (modulate(1024), modulate(8)) if act_name == "gelu" else (modulate(1024),):
                label = f"fp32 {act_name} {'film' if film else 'shift'} N<={meta['BLOCK_N']}"
                cases.append((label, "modulate_fwd", dict(meta, FILM=film, HAS_RES=True, ACT=act)))
                cases.append((label, "modulate_bwd", dict(meta, FILM=film, ACT=act)))
    for meta in (modulate(1024), modulate(8)):    # BatchNorm statistics' gradient (elementwise)
        cases.append((f"fp32 N<={meta['BLOCK_N']}", "norm_stats_bwd", meta))
    # Deduplicate: several labels may describe one compiled configuration.
    unique = {}
    for label, kernel, meta in cases:
        unique.setdefault((kernel, json.dumps(meta, sort_keys=True, default=str)),
                          (label, kernel, meta, None, None))
    return list(unique.values()) + launched_cases()


def launched_cases():
    """The variants the seed's workloads launch, with Triton's specialisation of every argument
    (tests/aot_launches.py), under the short kernel names of _kernels()."""
    from tests.aot_launches import launched_variants
    short = {fn: name for name, fn in _kernels().items()}
    from fastinr.ops.launches import triton_kernels
    kernels = triton_kernels()
    return [(f"{label} (launched)", short[kernels[name]], meta, signature, divisible)
            for label, name, meta, signature, divisible in launched_variants()]


def _kernels():
    from fastinr.ops.embed import _dz_kernel, _embed_bwd_kernel, _embed_fwd_kernel
    from fastinr.ops.linear import _linear_bwd_dw_kernel, _linear_bwd_dx_kernel, _linear_fwd_kernel
    from fastinr.ops.modulate import _modulate_bwd_kernel, _modulate_fwd_kernel
    from fastinr.ops.norm import _norm_stats_bwd_kernel
    from fastinr.ops.render import _render_fwd_kernel
    return {"linear_fwd": _linear_fwd_kernel, "linear_dx": _linear_bwd_dx_kernel,
            "linear_dw": _linear_bwd_dw_kernel, "embed_fwd": _embed_fwd_kernel,
            "embed_bwd": _embed_bwd_kernel, "embed_dz": _dz_kernel, "render": _render_fwd_kernel,
            "modulate_fwd": _modulate_fwd_kernel, "modulate_bwd": _modulate_bwd_kernel,
            "norm_stats_bwd": _norm_stats_bwd_kernel}


def compile_case(case):
    """Compile one case for sm_90; returns a result row (never raises)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    label, kernel, meta, launched, divisible = case
    meta = dict(meta)
    options = dict(num_warps=meta.pop("num_warps"), num_stages=meta.pop("num_stages"))
    fn = _kernels()[kernel]
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in meta:
            signature[name] = "constexpr"
        elif launched is not None:       # as Triton specialised the launch
            signature[name] = launched[name]
            if name in divisible:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.endswith("_ptr"):
            signature[name] = "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]   # torch allocations are 16-byte aligned
        else:
            signature[name] = "i32"
    row = dict(label=label, kernel=kernel, warps=options["num_warps"],
               stages=options["num_stages"],
               tiles="x".join(str(meta[k]) for k in ("BLOCK_M", "BLOCK_P", "BLOCK_N", "BLOCK_K")
                              if k in meta))
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=meta,
                                            attrs=attrs),
                                  target=GPUTarget("cuda", 90, 32), options=options)
        # Registers and spills as ptxas reports them, with the options triton passes it (the
        # cubin's stack frame is no proxy: libdevice sin/cos keep a small array there).
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        with tempfile.TemporaryDirectory() as tmp:
            ptx = os.path.join(tmp, "kernel.ptx")
            with open(ptx, "w") as f:
                f.write(compiled.asm["ptx"])
            report = subprocess.run([ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2",
                                     "--gpu-name=sm_90a", ptx, "-o", ptx + ".o"],
                                    capture_output=True, text=True, check=True).stderr
        row.update(shared=compiled.metadata.shared,
                   registers=int(re.search(r"Used (\d+) registers", report).group(1)),
                   spills=sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)",
                                                         report)))
    except Exception as err:  # reported as a failed row
        row.update(error=f"{type(err).__name__}: {str(err)[:400]}")
    return row


def compile_all(workers=None, only=()):
    """Every case (or those whose kernel and label contain one of `only`), compiled in parallel."""
    from concurrent.futures import ProcessPoolExecutor
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    cases = [c for c in aot_cases() if not only or any(s in f"{c[1]} {c[0]}" for s in only)]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(compile_case, cases))


def format_table(rows):
    lines = [f"{'kernel':<11} {'config':<34} {'tiles':<10} {'w/s':<5} {'shared':>7} {'regs':>5} "
             f"{'spills':>6}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['kernel']:<11} {r['label']:<34} ERROR {r['error']}")
        else:
            lines.append(f"{r['kernel']:<11} {r['label']:<34} {r['tiles']:<10} "
                         f"{r['warps']}/{r['stages']:<3} {r['shared']:>7} {r['registers']:>5} "
                         f"{r['spills']:>6}")
    return "\n".join(lines)


def _compile_rows(command, env, root):
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("triton_version", ["installed", "3.6.0"])
def test_every_launch_configuration_compiles_for_hopper(triton_version):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    if triton_version == "installed":
        command = [sys.executable, os.path.abspath(__file__), "--json"]
    else:
        if os.environ.get("FASTINR_AOT_TRITON36") != "1":
            pytest.skip("set FASTINR_AOT_TRITON36=1 to compile with Triton 3.6 too (a side venv, "
                        "one download of the wheel; CI sets it)")
        env["PYTHON"] = sys.executable
        command = ["bash", os.path.join(root, "tests", "aot_triton36.sh"), "--json"]
    rows = _compile_rows(command, env, root)
    print("\n" + format_table(rows))
    assert len(rows) >= 40
    assert any(r["label"].endswith("(launched)") for r in rows)
    errors = [r for r in rows if "error" in r]
    assert not errors, format_table(errors)
    too_big = [r for r in rows if r["shared"] > SHARED_LIMIT]
    assert not too_big, "shared memory above 227 KiB:\n" + format_table(too_big)
    spilling = [r for r in rows if r["spills"] > 0]
    assert not spilling, "register spills:\n" + format_table(spilling)


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
    import triton
    only = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]
    results = compile_all(only=only[0].split(",") if only else ())
    print(f"triton {triton.__version__}", file=sys.stderr)
    if "--json" in sys.argv:
        print(json.dumps(results))
    else:
        print(format_table(results))
