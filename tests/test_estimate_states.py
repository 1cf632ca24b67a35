"""Model states (weights, gradients, optimizer states) against the libraries' own arithmetic.

* ZeRO-2 and ZeRO-3: DeepSpeed's estimators, ``estimate_zero2_model_states_mem_needs`` and
  ``estimate_zero3_model_states_mem_needs`` (called with ``additional_buffer_factor=1``: the bytes themselves, no
  safety factor; ``zero_init``: the HF integration builds ZeRO-3 models under ``zero.Init``), on full fine-tunes
  (the estimators assume every parameter trains) of 1B, 8B and 70B shapes on 1, 2, 8 and 16 GPUs (16 = two nodes
  of 8), with and without CPU offload.
* FSDP2: ``fully_shard`` really run (a fake process group of N ranks on the CPU) over a module built from a
  catalog shape; the per-rank parameter, gradient and AdamW state bytes equal ftplan's terms.

The ftplan side is ``states.compute``: the per-GPU model states are its terms and gradients less the two terms the
DeepSpeed estimators leave out (ZeRO-3's live parameters and the communication buckets, see ``states.py``); the
host figure is per node (``host`` per GPU × GPUs per node).
"""

from __future__ import annotations

import math

import pytest

from ftplan.catalog import get_model, largest_layer_params, linear_modules, param_counts
from ftplan.estimate import resolve, states
from ftplan.schemas import SftStage

deepspeed_zero2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
deepspeed_zero3 = pytest.importorskip("deepspeed.runtime.zero.stage3")

SHAPES = ("llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b")
LAYOUTS = ((1, 1), (2, 1), (8, 1), (8, 2))
"""(GPUs per node, nodes): 1, 2, 8 and 16 GPUs."""
BEYOND_THE_ESTIMATORS = ("ZeRO-3 live parameters", "DeepSpeed comm buckets")
"""ftplan terms the DeepSpeed estimators do not count (``states._sharding_buffers``)."""
ROUNDING = 16
"""Bytes: ftplan rounds each term down separately, DeepSpeed rounds the sum once."""


def _states(key: str, strategy: str, gpus_per_node: int, nodes: int, *, offload_optimizer: bool = False,
            offload_params: bool = False) -> tuple[int, int, int]:
    """(model-state bytes per GPU, host bytes per node, P) of a bf16 full fine-tune."""
    stage = SftStage.model_validate({
        "id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-5, "adapter": {"type": "full"},
        "distributed": {"strategy": strategy, "offload_optimizer": offload_optimizer,
                        "offload_params": offload_params}})
    r = resolve(get_model(key), stage, seq_len=2048, world_size=gpus_per_node * nodes, nodes=nodes)
    st = states.compute(r)
    gpu = sum(t.bytes for t in st.terms if t.name not in BEYOND_THE_ESTIMATORS) + st.grads.bytes
    return gpu, st.host * gpus_per_node, st.trainable


@pytest.mark.parametrize("key", SHAPES)
@pytest.mark.parametrize(("gpus_per_node", "nodes"), LAYOUTS, ids=[f"{g * n}gpu" for g, n in LAYOUTS])
@pytest.mark.parametrize(("offload_optimizer", "offload_params"), [(False, False), (True, False), (True, True)],
                         ids=["no-offload", "offload-optimizer", "offload-both"])
def test_zero3_matches_deepspeeds_estimator(key, gpus_per_node, nodes, offload_optimizer, offload_params):
    gpu, host, p = _states(key, "zero3", gpus_per_node, nodes, offload_optimizer=offload_optimizer,
                           offload_params=offload_params)
    assert p == param_counts(get_model(key)).total
    ds_host, ds_gpu, _ = deepspeed_zero3.estimate_zero3_model_states_mem_needs(
        p, largest_layer_params(get_model(key)), num_gpus_per_node=gpus_per_node, num_nodes=nodes,
        cpu_offload=offload_optimizer, cpu_offload_params=offload_params, zero_init=True,
        additional_buffer_factor=1)
    assert gpu == pytest.approx(ds_gpu, abs=ROUNDING)
    if offload_optimizer:  # without offload DeepSpeed's host figure is the largest layer per process at load
        assert host == pytest.approx(ds_host, abs=ROUNDING * gpus_per_node)
    else:
        assert host == 0


@pytest.mark.parametrize("key", SHAPES)
@pytest.mark.parametrize(("gpus_per_node", "nodes"), LAYOUTS, ids=[f"{g * n}gpu" for g, n in LAYOUTS])
@pytest.mark.parametrize("offload", [False, True], ids=["no-offload", "offload-optimizer"])
def test_zero2_matches_deepspeeds_estimator(key, gpus_per_node, nodes, offload):
    gpu, host, p = _states(key, "zero2", gpus_per_node, nodes, offload_optimizer=offload)
    ds_host, ds_gpu = deepspeed_zero2.estimate_zero2_model_states_mem_needs(
        p, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=offload, additional_buffer_factor=1)
    assert gpu == pytest.approx(ds_gpu, abs=ROUNDING)
    if not offload:  # DeepSpeed's host figure is each process's fp32 copy of the model at load, not a state
        assert host == 0
        return
    # The offloaded states: fp32 master + m + v + fp32 gradient partition, 16 B per parameter over the node's
    # share. DeepSpeed writes P × max(4 × GPUs, 16): the same 16 P on one node of up to 4 GPUs; past that its
    # figure is each process's fp32 copy of the whole model at load (4 B × every GPU, nodes included), which is
    # a start-up peak, not an offloaded state.
    assert host == pytest.approx(16 * p // nodes, abs=ROUNDING * gpus_per_node)
    if nodes == 1 and gpus_per_node <= 4:
        assert host == pytest.approx(ds_host, abs=ROUNDING * gpus_per_node)
    else:
        assert ds_host == 4 * gpus_per_node * nodes * p > host


def test_zero1_is_zero2_with_whole_16_bit_gradients():
    """DeepSpeed ships no stage-1 estimator; stage 1 runs stage 2's code without partitioning gradients."""
    for key in SHAPES:
        z1, _, p = _states(key, "zero1", 8, 1)
        z2, _, _ = _states(key, "zero2", 8, 1)
        assert z1 - z2 == pytest.approx(2 * p - 2 * p // 8, abs=ROUNDING)


def test_fsdp2_shards_match_fully_shard():
    """Run ``fully_shard`` on a module of the ``ftplan-tiny`` shape over a fake group of N ranks, step AdamW, and
    count rank 0's bytes: every parameter, gradient and moment is a 1/N dim-0 shard (fp32: accelerate upcasts
    trainable parameters before sharding), as ftplan's FSDP2 terms say."""
    torch = pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    shape = get_model("ftplan-tiny")

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = torch.nn.ModuleList(torch.nn.Linear(m.d_in, m.d_out, bias=m.bias)
                                               for m in linear_modules(shape) for _ in range(m.per_layer))
            self.norms = torch.nn.ParameterList(torch.nn.Parameter(torch.ones(shape.hidden_size)) for _ in range(2))

        def forward(self, x):
            out = sum(lin(torch.ones(x.shape[0], lin.in_features)).sum() for lin in self.linears)
            return x + out + sum(n.sum() for n in self.norms)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(shape.vocab_size, shape.hidden_size)
            self.layers = torch.nn.ModuleList(Layer() for _ in range(shape.num_layers))
            self.norm = torch.nn.Parameter(torch.ones(shape.hidden_size))
            self.lm_head = torch.nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)

        def forward(self, ids):
            x = self.embed(ids)
            for layer in self.layers:
                x = layer(x)
            return self.lm_head(x * self.norm).sum()

    for n in (2, 8):
        dist.init_process_group("fake", store=fake_pg.FakeStore(), rank=0, world_size=n)
        try:
            torch.manual_seed(0)
            model = Model()
            assert sum(p.numel() for p in model.parameters()) == param_counts(shape).total
            mesh = init_device_mesh("cpu", (n,))
            for layer in model.layers:
                fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            model(torch.zeros(2, 4, dtype=torch.long)).backward()
            opt = torch.optim.AdamW(model.parameters())
            opt.step()
            weights = grads = moments = 0
            for p in model.parameters():
                local = p.to_local()
                assert local.numel() == math.ceil(p.shape[0] / n) * (p.numel() // p.shape[0])
                weights += local.numel() * local.element_size()
                grads += p.grad.to_local().numel() * p.grad.to_local().element_size()
                moments += sum(opt.state[p][k].to_local().numel() * opt.state[p][k].to_local().element_size()
                               for k in ("exp_avg", "exp_avg_sq"))
        finally:
            dist.destroy_process_group()
        stage = SftStage.model_validate({"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-5,
                                         "adapter": {"type": "full"}, "distributed": "fsdp2"})
        st = states.compute(resolve(shape, stage, seq_len=16, world_size=n))
        terms = {t.name: t.bytes for t in st.terms}
        assert terms["trainable weights (fp32 shards)"] == weights
        assert terms["optimizer states (AdamW)"] == moments
        assert st.grads.bytes == grads


@pytest.mark.parametrize("key", SHAPES)
def test_fsdp2_cpu_offload_keeps_every_shard_on_the_host(key):
    """``CPUOffloadPolicy`` (accelerate's ``fsdp_offload_params``, set by either offload flag): the sharded
    parameters, gradients and optimizer states live in host memory; the GPU keeps only the unsharded units."""
    for flags in ({"offload_optimizer": True}, {"offload_params": True}):
        stage = SftStage.model_validate({"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-5,
                                         "adapter": {"type": "full"},
                                         "distributed": {"strategy": "fsdp2", **flags}})
        st = states.compute(resolve(get_model(key), stage, seq_len=2048, world_size=8))
        p = st.trainable
        assert [t.name for t in st.terms] == ["FSDP2 unsharded units"] and st.grads.bytes == 0
        assert st.host == pytest.approx(16 * p / 8, abs=ROUNDING)
