"""Compile fastseg's Triton kernels for an H100 (sm_90) without a GPU.

Triton's compiler and the ptxas it ships run on any machine: this lowers
every kernel, in every launch configuration autotuning may pick, to a cubin
for sm_90 and reports per case whether it compiled, the shared memory it
needs and whether its products run on the tensor cores. A kernel that only
fails on the GPU (a layout the backend cannot lower, more shared memory than
an SM has) fails here.

Run as a script (``python tests/triton_sm90_compile.py FAMILY``) in a
process without ``TRITON_INTERPRET``, which turns ``triton.jit`` into the
interpreter; prints one JSON line per case. ``test_triton_compile.py``
drives it.
"""

import json
import multiprocessing
import os
import sys
from dataclasses import asdict, dataclass, field

SM90 = ("cuda", 90, 32)
POINTER_TYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


@dataclass(frozen=True)
class Case:
    family: str
    kernel: str  # module:attribute of the autotuned kernel
    dtype: str
    constexprs: dict
    config: dict
    num_warps: int
    num_stages: int
    pointers: dict = field(default_factory=dict)  # pointer arguments not of the data dtype

    @property
    def name(self) -> str:
        flags = ",".join(f"{k}={v}" for k, v in sorted({**self.constexprs, **self.config}.items())
                         if k not in ("DOT_DTYPE", "INPUT_PRECISION"))
        return f"{self.kernel.split(':')[1]}[{self.dtype},{flags},w{self.num_warps}s{self.num_stages}]"


def _configs_of(module, name):
    return [(dict(c.kwargs), c.num_warps, c.num_stages) for c in getattr(module, name)]


def cases(family: str) -> list[Case]:
    import triton.language as tl

    from fastseg.kernels import conv2d, depthwise_conv2d, depthwise_separable_conv2d

    dot = {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}
    # Every launch configuration in bfloat16 (what the H100 floors are
    # measured in); the first in float16 and float32 (tf32).
    def dtype_configs(configs):
        return [("bf16", c) for c in configs] + [(d, configs[0]) for d in ("fp16", "fp32")]

    out = []
    if family == "conv2d":
        for transposed in (False, True):
            for dtype, (config, w, s) in dtype_configs(_configs_of(conv2d, "_GEMM_CONFIGS")):
                out.append(Case(family, "fastseg.kernels.conv2d:_implicit_gemm_kernel", dtype,
                                {"TRANSPOSED": transposed, "HAS_BIAS": not transposed, "DOT_DTYPE": dot[dtype],
                                 "INPUT_PRECISION": "tf32"}, config, w, s))
        for dtype, (config, w, s) in dtype_configs(_configs_of(conv2d, "_WGRAD_CONFIGS")):
            out.append(Case(family, "fastseg.kernels.conv2d:_weight_grad_kernel", dtype,
                            {"DOT_DTYPE": dot[dtype], "INPUT_PRECISION": "tf32"}, config, w, s))
    elif family == "depthwise_conv2d":
        for transposed in (False, True):
            for dtype, (config, w, s) in dtype_configs(_configs_of(depthwise_conv2d, "_TILE_CONFIGS")):
                out.append(Case(family, "fastseg.kernels.depthwise_conv2d:_depthwise_kernel", dtype,
                                {"TRANSPOSED": transposed, "HAS_BIAS": not transposed}, config, w, s))
        for taps_block in (16, 64):  # 3x3 and 5x5 pad to 16 taps, 7x7 to 64
            configs = depthwise_conv2d._prune_gathers(depthwise_conv2d._WGRAD_CONFIGS, {}, TAPS_BLOCK=taps_block)
            for dtype, (config, w, s) in dtype_configs([(dict(c.kwargs), c.num_warps, c.num_stages)
                                                         for c in configs]):
                out.append(Case(family, "fastseg.kernels.depthwise_conv2d:_depthwise_weight_grad_kernel", dtype,
                                {"TAPS_BLOCK": taps_block}, config, w, s))
    elif family == "depthwise_separable_conv2d":
        for dtype, (config, w, s) in dtype_configs(_configs_of(depthwise_separable_conv2d, "_CONFIGS")):
            out.append(Case(family, "fastseg.kernels.depthwise_separable_conv2d:_separable_kernel", dtype,
                            {"MID_ACTIVATION": 2, "OUT_ACTIVATION": 1, "HAS_DEPTHWISE_BIAS": True,
                             "HAS_POINTWISE_BIAS": True, "DOT_DTYPE": dot[dtype], "INPUT_PRECISION": "tf32"},
                            config, w, s))
    elif family == "max_pool2d":
        out.extend(_pooling_cases(family))
    else:
        raise SystemExit(f"unknown family {family!r}")
    return out


def _pooling_cases(family: str) -> list[Case]:
    """Max-pool and max-unpool kernels (not autotuned: one block size), in
    each index format and layout; 16-bit data compares and sums in float32."""
    import triton.language as tl

    from fastseg.kernels.layout import BLOCK

    module = "fastseg.kernels"
    out = []
    for dtype in ("bf16", "fp32"):
        for compact in (False, True):
            index = {"idx_ptr": "*u8" if compact else "*i64"}
            for channels_last in (False, True):
                layout = {"CHANNELS_LAST": channels_last, "BLOCK": BLOCK}
                out.append(Case(family, f"{module}.max_pool2d:_max_pool2d_kernel", dtype,
                                {"KH": 2, "KW": 2, "COMPACT": compact, "COMPARE": tl.float32, **layout},
                                {}, 4, 3, index))
                for sum_, check, one_window in ((True, False, False), (True, False, True), (False, True, True),
                                                (False, True, False)):
                    out.append(Case(family, f"{module}.pool_window:_window_gather_kernel", dtype,
                                    {"KH": 3, "KW": 3, "COMPACT": compact, "SUM": sum_, "CHECK": check and compact,
                                     "ONE_WINDOW": one_window, "ACC": tl.float32, **layout},
                                    {}, 4, 3, {**index, "invalid_ptr": "*i32"}))
                out.append(Case(family, f"{module}.max_unpool2d:_unpool_backward_kernel", dtype,
                                {"KH": 2, "KW": 2, "COMPACT": compact, **layout}, {}, 4, 3, index))
                if not compact:  # the scatter takes flat indices only
                    out.append(Case(family, f"{module}.max_unpool2d:_unpool_scatter_kernel", dtype, layout, {}, 4, 3,
                                    {**index, "invalid_ptr": "*i32"}))
    return out


def compile_case(case: Case) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module_name, attribute = case.kernel.split(":")
    kernel = getattr(importlib.import_module(module_name), attribute)
    jit_fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    constexprs = {**case.constexprs, **case.config}
    signature = {}
    for name in jit_fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in case.pointers:
            signature[name] = case.pointers[name]
        elif name == "partial_ptr":
            signature[name] = "*fp32"  # split reductions accumulate in float32
        elif name.endswith("_ptr"):
            signature[name] = POINTER_TYPES[case.dtype]
        else:
            signature[name] = "i32"
    source = ASTSource(fn=jit_fn, signature=signature,
                       constexprs={(jit_fn.arg_names.index(k),): v for k, v in constexprs.items()})
    result = {"name": case.name, **{k: v for k, v in asdict(case).items() if k in ("family", "dtype")}}
    try:
        compiled = triton.compile(source, target=GPUTarget(*SM90),
                                  options={"num_warps": case.num_warps, "num_stages": case.num_stages})
    except Exception as error:  # noqa: BLE001 - every failure is the finding to report
        return {**result, "compiled": False, "error": f"{type(error).__name__}: {error}"[:2000]}
    ptx = compiled.asm["ptx"]
    return {**result, "compiled": True, "shared_bytes": compiled.metadata.shared,
            "tensor_cores": "wgmma" in ptx or "mma.sync" in ptx}


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1: the interpreter replaces the compiler")
    todo = cases(sys.argv[1])
    with multiprocessing.get_context("spawn").Pool(min(len(todo), os.cpu_count() or 1)) as pool:
        for result in pool.imap(compile_case, todo):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
