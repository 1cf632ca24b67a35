"""One training step as the runtime takes it (bf16 autocast, outputs dropped before backward), with and
without the `kernels: ftplan` set, on a random-init Llama-3.1-8B saved locally (baseline_lora.py's `prep`).
A QLoRA base keeps its 16-bit embeddings, head and norms as the runtime does, or with `--kbit-upcast` goes
through PEFT's prepare_model_for_kbit_training (fp32), as the usual HF+PEFT recipe does.
One configuration per process; prints one JSON line. Both arms run in the same session on the same card:

    for cfg in "lora 2048 2" "lora 2048 2 --ftplan" "qlora 2048 2 --ftplan" "qlora 8192 1 --ftplan"; do
      set -- $cfg; python3 bench/runtime_step_probe.py --mode $1 --seq $2 --batch $3 --dir /tmp/m32 "${@:4}"
    done

`--ftplan` applies every kernel the runtime applies, the fused LoRA functions included; `--no-lora-op` leaves the
LoRA layers to PEFT (the kernel set before them), so the two arms measure what that op adds. `--offload` keeps the
checkpoints in pinned host memory as `gradient_checkpointing: offload` does (the runtime's own CheckpointOffload).
`--shapes 2048x2 8192x1 16384x1:1 ...` measures several shapes with one loaded model (step_shapes.py; one JSON line
each, fewest tokens first; a shape that runs out of memory ends the list with "oom": true).
"""
import argparse, json, time
import torch

from step_shapes import parse_shapes, step_record, time_steps

def run(a):
    from transformers import LlamaForCausalLM, BitsAndBytesConfig
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    base_mem = torch.cuda.mem_get_info()
    if a.mode == "qlora":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
        m = LlamaForCausalLM.from_pretrained(a.dir, quantization_config=q, dtype=torch.bfloat16, device_map={"": 0})
        if a.kbit_upcast:
            from peft import prepare_model_for_kbit_training
            m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=False)
    else:
        m = LlamaForCausalLM.from_pretrained(a.dir, dtype=torch.bfloat16, device_map={"": 0})
    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    m.config.use_cache = False
    m.train()
    lc = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    m = get_peft_model(m, lc)
    counts = None
    if a.ftplan:
        from ftplan_runtime.kernels import apply_ftplan_kernels
        counts = apply_ftplan_kernels(m, lora=not a.no_lora_op).counts()  # --no-lora-op: PEFT's LoRA layers
    offload = None
    if a.offload:
        from ftplan_runtime.offload import CheckpointOffload, offload_checkpoints
        offload = offload_checkpoints(m, CheckpointOffload())
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4, fused=True)
    shapes = parse_shapes(a.shapes or [f"{a.seq}x{a.batch}"], a.warmup, a.steps)
    measured = []
    for shape in shapes:
        try:
            line = measure(a, m, opt, shape, counts, base_mem, offload)
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            print(json.dumps({"mode": a.mode, "ftplan": a.ftplan, "offload": a.offload, "seq": shape.seq,
                              "batch": shape.batch, "oom": True, "gpu": torch.cuda.get_device_name()}), flush=True)
            break
        print(json.dumps(line), flush=True)
        measured.append(line)
    timed = {k: measured[0][k] for k in ("step_s_median", "tok_per_s")} if measured else {}
    if a.host_profile:
        print(json.dumps({**timed, **host_profile(a, m, opt, shapes[0])}), flush=True)
    if a.profile:
        try:
            print(json.dumps({**timed, **profile(a, m, opt, shapes[0])}), flush=True)
        except Exception as e:  # the measured lines above stand; say why the profile is missing
            print(json.dumps({"profile_error": repr(e)[:500]}), flush=True)


def sdpa_backends(name):
    """The SDPA backends --sdpa allows (None: PyTorch's own choice)."""
    if name is None:
        return None
    from torch.nn.attention import SDPBackend
    return [{"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION}[name]]


def train_step(a, m, opt, ids):
    """Forward under bf16 autocast (the runtime's fused loss with --ftplan), backward, optimizer step; with
    --sdpa, forward and backward (the recomputed layers included) under that one attention backend."""
    import contextlib
    from torch.nn.attention import sdpa_kernel
    backends = sdpa_backends(a.sdpa)
    with sdpa_kernel(backends) if backends else contextlib.nullcontext():
        _train_step(a, m, opt, ids)


def _train_step(a, m, opt, ids):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        if a.ftplan:
            from ftplan_runtime.kernels import causal_lm_loss
            loss = causal_lm_loss(m, ids, ids)
        else:
            loss = m(input_ids=ids, labels=ids).loss  # outputs dropped, like Trainer.compute_loss
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)


PROFILE_GROUPS = (  # (group, substrings of a GPU kernel's name), first match wins
    ("offload copies", ("Memcpy", "Memset")),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
    ("NF4 dequantisation", ("nf4", "dequant", "kDequantize")),
    ("optimizer", ("adam", "Adam", "multi_tensor")),
    ("loss head", ("cross_entropy", "logprob", "_ce_", "log_softmax", "nll")),
    ("norm, RoPE, SwiGLU, LoRA glue", ("rms", "rope", "swiglu", "silu", "lora")),
    ("GEMM", ("gemm", "Gemm", "matmul", "xmma", "nvjet", "cutlass", "sm90", "ampere_bf16", "cublas")),
)


def profile_group(name: str) -> str:
    """The group of PROFILE_GROUPS a GPU kernel's name belongs to ("other" when none)."""
    for group, keys in PROFILE_GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def profiled_step(a, m, opt, shape, with_stack: bool = False):
    """(PyTorch profiler, host seconds, wall seconds) of one training step at `shape`, after one warm step: host
    seconds until the step returned, wall seconds until the GPU finished it."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    ids = torch.randint(0, m.config.vocab_size, (shape.batch, shape.seq), device="cuda")
    train_step(a, m, opt, ids)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=with_stack) as prof:
        t0 = time.perf_counter()
        train_step(a, m, opt, ids)
        host = time.perf_counter() - t0
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return prof, host, wall


def profile(a, m, opt, shape):
    """Where one training step's GPU time goes: milliseconds per kernel group and the ten longest kernels."""
    from torch.autograd import DeviceType

    prof, _, wall = profiled_step(a, m, opt, shape)
    groups, kernels = {}, {}
    for e in prof.events():
        if e.device_type != DeviceType.CUDA:
            continue
        ms = e.time_range.elapsed_us() / 1000
        groups[profile_group(e.name)] = groups.get(profile_group(e.name), 0.0) + ms
        kernels[e.name] = kernels.get(e.name, 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:10]
    return {**_session(a), "profile": {"seq": shape.seq, "batch": shape.batch, "ftplan": a.ftplan, "offload": a.offload,
                        "step_wall_ms": round(wall * 1000, 1), "gpu_busy_ms": round(sum(groups.values()), 1),
                        "groups_ms": {k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
                        "top_kernels_ms": [[k[:120], round(v, 2)] for k, v in top]}}


def _session(a) -> dict:
    """What names a profile's run: the card, torch, the mode."""
    return {"mode": a.mode, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}


def host_profile(a, m, opt, shape, top: int = 25):
    """Where the host's time goes while it issues one training step (after a warm step), from PyTorch's profiler
    with Python stacks: busy milliseconds per host thread (the autograd engine issues backward on its own), kernel
    launches and the milliseconds spent in them, and the `top` Python functions and ATen ops by inclusive time."""
    import tempfile

    prof, host, wall = profiled_step(a, m, opt, shape, with_stack=True)
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    return {**_session(a), "host_profile": {"seq": shape.seq, "batch": shape.batch, "ftplan": a.ftplan,
                             "host_ms_profiled": round(host * 1e3, 1), "wall_ms_profiled": round(wall * 1e3, 1),
                             **host_breakdown(events, top)}}


def host_breakdown(events: list[dict], top: int) -> dict:
    """Summaries of a Chrome trace's host events: see host_profile."""
    threads, launches, launch_us, gpu_busy_us = {}, 0, 0.0, 0.0
    functions, ops = {}, {}
    for e in events:
        if e.get("ph") != "X":
            continue
        cat, name, dur = e.get("cat", ""), e.get("name", ""), float(e.get("dur", 0))
        if cat == "kernel":
            gpu_busy_us += dur
        elif cat == "cuda_runtime" and "Launch" in name:
            launches += 1
            launch_us += dur
        elif cat == "python_function":
            functions[name] = functions.get(name, 0.0) + dur
        elif cat == "cpu_op":
            ops[name] = ops.get(name, 0.0) + dur
        if cat in ("cpu_op", "python_function"):
            span = threads.setdefault(str(e.get("tid")), [float("inf"), 0.0])
            span[0], span[1] = min(span[0], float(e["ts"])), max(span[1], float(e["ts"]) + dur)

    def ranked(table):
        return [[k[:140], round(v / 1e3, 2)] for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:top]]

    return {"thread_span_ms": {t: round((hi - lo) / 1e3, 1) for t, (lo, hi) in threads.items()},
            "kernel_launches": launches, "launch_ms": round(launch_us / 1e3, 1),
            "gpu_kernels_ms": round(gpu_busy_us / 1e3, 1),
            "python_inclusive_ms": ranked(functions), "aten_inclusive_ms": ranked(ops)}


def measure(a, m, opt, shape, counts, base_mem, offload):
    """Median step time and peak memory of a shape's warm-up and timed training steps."""
    seq, batch = shape.seq, shape.batch
    V = m.config.vocab_size
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    host = []
    times = time_steps(lambda ids: train_step(a, m, opt, ids),
                       lambda: torch.randint(0, V, (batch, seq), device="cuda"), shape.warmup, shape.steps, host)
    line = {"mode": a.mode, "ftplan": a.ftplan, "kernels": counts, "kbit_upcast": a.kbit_upcast, "offload": a.offload,
            "sdpa": a.sdpa,
            **step_record(times, shape, base_mem[0], host)}
    if offload is not None:
        line["offload_host_gib"] = offload.buffers.peak_capacity_bytes / 2**30
    return line

p = argparse.ArgumentParser()
p.add_argument("--dir", default="/tmp/m32"); p.add_argument("--mode", default="lora"); p.add_argument("--ftplan", action="store_true")
p.add_argument("--seq", type=int, default=2048); p.add_argument("--batch", type=int, default=2)
p.add_argument("--kbit-upcast", action="store_true")
p.add_argument("--no-lora-op", action="store_true", help="with --ftplan: every kernel but the fused LoRA functions")
p.add_argument("--offload", action="store_true", help="checkpoints to pinned host memory (gradient_checkpointing: offload)")
p.add_argument("--shapes", nargs="+", help="SEQxBATCH[:STEPS] shapes, one loaded model (overrides --seq/--batch)")
p.add_argument("--sdpa", choices=["cudnn", "flash", "efficient"], help="one attention backend for the whole step")
p.add_argument("--profile", action="store_true", help="after the measurements: one profiled step at the first shape")
p.add_argument("--host-profile", action="store_true", help="after the measurements: PyTorch's profiler (with Python stacks) of the host issuing one step")
p.add_argument("--steps", type=int, default=3); p.add_argument("--warmup", type=int, default=2)
run(p.parse_args())
