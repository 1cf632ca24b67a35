"""The training stage of an imported Axolotl config: its adapter, its kind's objective (β, the DPO loss family, the
reference, KTO weights, reward centring), optimisation, precision, memory and speed settings, distribution,
checkpoints and trackers, each value with the comment naming the Axolotl keys it came from."""

from __future__ import annotations

from typing import Any

from ..catalog import MODELS
from ..migration import ALIASES
from ..schemas.runtime_args import KERNEL_FAMILIES
from ..schemas.stages import TRAIN_KINDS
from .axolotl_common import Builder, ImportRefused, integer, number, on

_DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")
"""Axolotl ``dpo_loss_type`` entries a DPO stage takes as its ``loss_type``."""
_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")


def _converted(key: str, value: Any) -> str | None:
    """The ftplan value ``migration.ALIASES`` gives a foreign key's value (``optimizer: adamw_bnb_8bit`` ->
    ``adamw_8bit``), or None when there is none."""
    convert = ALIASES[key].convert
    return convert(value, str(value)) if convert is not None else None


def train_stage(b: Builder, kind: str, loss: str | None, base: str) -> dict[str, Any]:
    stage: dict[str, Any] = {"id": kind, "kind": kind, "data": "data"}
    if kind not in TRAIN_KINDS:  # pragma: no cover - every kind the importer writes is a stage kind
        raise ImportRefused(f"this ftplan has no `{kind}` stage", "upgrade ftplan")
    i = 1
    if kind in ("dpo", "orpo", "kto"):
        b.comments[("stages", i, "kind")] = ("starts from the base model, which is also the reference policy, as "
                                             "in Axolotl" if kind != "orpo" else "starts from the base model; ORPO "
                                             "has no reference policy")
    stage["adapter"] = _adapter(b, kind)
    stage.update(_objective(b, kind, loss))
    _optimisation(b, stage)
    _memory_and_speed(b, stage, kind, base)
    _checkpoints(b, stage)
    return stage


def _put(b: Builder, stage: dict[str, Any], key: str, value: Any, keys: tuple[str, ...], note: str = "") -> None:
    """Set ``stage[key]`` from the Axolotl ``keys`` (with a comment) and record the mapping."""
    stage[key] = value
    kind = stage["kind"]
    b.took(keys, f"stages[{kind}].{key}")
    b.comment(("__train__", key), keys, note)


def _adapter(b: Builder, kind: str) -> dict[str, Any]:
    cfg = b.cfg
    declared = str(cfg.get("adapter") or "").strip().lower()
    if not declared:
        quantized = tuple(k for k in ("load_in_4bit", "load_in_8bit") if b.given(k) and not on(cfg[k]))
        b.took(tuple(k for k in ("adapter",) if b.given(k)) + quantized, f"stages[{kind}].adapter.type")
        b.comments[("__train__", "adapter")] = "no `adapter` in the Axolotl config: every weight trains"
        return {"type": "full"}
    if declared not in ("lora", "qlora"):
        b.skip("adapter", f"ftplan trains lora, qlora, dora or every weight, not `{declared}`; a LoRA is written")
        declared = "lora"
    four_bit = on(cfg.get("load_in_4bit"))
    adapter_type = "qlora" if declared == "qlora" or four_bit else "lora"
    keys: tuple[str, ...] = ("adapter",) + (("load_in_4bit",) if four_bit else ())
    if adapter_type == "lora" and on(cfg.get("peft_use_dora")):
        adapter_type, keys = "dora", keys + ("peft_use_dora",)
    out: dict[str, Any] = {"type": adapter_type}
    b.took(keys, f"stages[{kind}].adapter.type")
    if b.given("load_in_4bit") and not four_bit:
        b.took(("load_in_4bit",), f"stages[{kind}].adapter.type")
    b.comment(("__train__", "adapter"), keys)
    for src, dst, conv in (("lora_r", "r", integer), ("lora_alpha", "alpha", number),
                           ("lora_dropout", "dropout", number)):
        value = conv(cfg[src]) if b.given(src) else None
        if value is not None:
            out[dst] = int(value) if dst == "alpha" and value == int(value) else value
            b.took((src,), f"stages[{kind}].adapter.{dst}")
            b.comment(("__train__", "adapter", dst), (src,))
    targets = cfg.get("lora_target_modules")
    if on(cfg.get("lora_target_linear")):
        out["targets"] = "all-linear"
        keys = ("lora_target_linear",) + (("lora_target_modules",) if targets else ())
        b.took(keys, f"stages[{kind}].adapter.targets")
        b.comment(("__train__", "adapter", "targets"), keys, "every linear layer" + (
            " (Axolotl adds the listed modules to them)" if targets else ""))
    elif isinstance(targets, list) and targets:
        out["targets"] = [str(t) for t in targets]
        b.took(("lora_target_modules",), f"stages[{kind}].adapter.targets")
        b.comment(("__train__", "adapter", "targets"), ("lora_target_modules",))
    elif isinstance(targets, str) and targets:
        b.skip("lora_target_modules", "ftplan's `targets` is `all-linear` or a list of module names, not a regular "
               "expression; the default, all-linear (every decoder projection), is used")
    elif b.given("lora_target_linear"):
        b.skip("lora_target_linear", "false, with no `lora_target_modules`: Axolotl leaves the targets to PEFT's "
               "default for the family (often q_proj and v_proj); ftplan's default, all-linear, is used")
    save = cfg.get("lora_modules_to_save")
    if isinstance(save, list) and save:
        out["modules_to_save"] = [str(m) for m in save]
        b.took(("lora_modules_to_save",), f"stages[{kind}].adapter.modules_to_save")
        b.comment(("__train__", "adapter", "modules_to_save"), ("lora_modules_to_save",))
    if on(cfg.get("load_in_8bit")):
        b.skip("load_in_8bit", "ftplan has no 8-bit base: the LoRA trains on 16-bit weights (`type: qlora` is a "
               "4-bit base)")
    elif b.given("load_in_8bit"):
        b.took(("load_in_8bit",), f"stages[{kind}].adapter.type")
    return out


def _objective(b: Builder, kind: str, loss: str | None) -> dict[str, Any]:
    """The kind's own settings: β, the DPO loss and its supervised term, the reference, KTO weights, centring."""
    cfg = b.cfg
    out: dict[str, Any] = {}
    beta_keys = tuple(k for k in ("rl_beta", "dpo_beta", "orpo_alpha") if b.given(k))
    if kind in ("dpo", "kto", "orpo") and beta_keys:
        key = next(k for k in ("rl_beta", "dpo_beta", "orpo_alpha") if k in beta_keys)
        beta = number(cfg[key])
        if beta is not None:
            out["beta"] = beta
            b.took((key,), f"stages[{kind}].beta")
            b.comment(("__train__", "beta"), (key,), "TRL's beta (the ORPO paper's λ)" if key == "orpo_alpha" else "")
    if kind == "dpo":
        out.update(_dpo_loss(b, loss or "sigmoid"))
    if kind == "kto":
        for src, dst in (("kto_desirable_weight", "desirable_weight"),
                         ("kto_undesirable_weight", "undesirable_weight")):
            if b.given(src) and number(cfg[src]) is not None:
                out[dst] = number(cfg[src])
                b.took((src,), f"stages[kto].{dst}")
                b.comment(("__train__", dst), (src,))
    if kind == "reward" and b.given("center_rewards_coefficient"):
        out["center_rewards_coefficient"] = number(cfg["center_rewards_coefficient"])
        b.took(("center_rewards_coefficient",), "stages[reward].center_rewards_coefficient")
        b.comment(("__train__", "center_rewards_coefficient"), ("center_rewards_coefficient",))
    if kind in ("dpo", "kto") and b.given("precompute_ref_log_probs") and loss != "simpo":
        out["reference"] = "precomputed" if on(cfg["precompute_ref_log_probs"]) else "live"
        b.took(("precompute_ref_log_probs",), f"stages[{kind}].reference")
        b.comment(("__train__", "reference"), ("precompute_ref_log_probs",))
    return out


def _dpo_loss(b: Builder, loss: str) -> dict[str, Any]:
    """``loss_type``, ``label_smoothing``, ``simpo_gamma`` and ``sft_weight`` of a DPO stage."""
    cfg = b.cfg
    out: dict[str, Any] = {}
    keys: tuple[str, ...] = ("rl",)
    sft_weight: float | None = None
    sft_keys: tuple[str, ...] = ()
    listed = cfg.get("dpo_loss_type")
    if loss == "sigmoid" and isinstance(listed, list) and listed:
        weights = cfg.get("dpo_loss_weights") or [1.0] * len(listed)
        pairs = dict(zip([str(x) for x in listed], [number(w) for w in weights]))
        main = [x for x in pairs if x != "sft"]
        if len(main) == 1 and main[0] in _DPO_LOSSES and pairs[main[0]] == 1.0 and len(pairs) <= 2:
            loss, keys = main[0], ("dpo_loss_type",)
            b.took(("dpo_loss_type",) + (("dpo_loss_weights",) if b.given("dpo_loss_weights") else ()),
                   "stages[dpo].loss_type")
            if "sft" in pairs:
                sft_weight, sft_keys = pairs["sft"], ("dpo_loss_type", "dpo_loss_weights")
        else:
            why = ("ftplan's DPO stage trains one of sigmoid, ipo, hinge, robust and simpo, with an optional "
                   f"supervised term (`sft_weight`); {listed} is written as its first loss" if main else "")
            b.skip("dpo_loss_type", why or "no preference loss in the list")
            if b.given("dpo_loss_weights"):
                b.skip("dpo_loss_weights", "goes with dpo_loss_type")
    if loss != "sigmoid" or keys != ("rl",):
        out["loss_type"] = loss
        b.comment(("__train__", "loss_type"), keys)
    if b.given("dpo_label_smoothing"):
        smoothing = number(cfg["dpo_label_smoothing"])
        if loss in ("robust", "simpo") and smoothing is not None and 0 <= smoothing < 0.5:
            out["label_smoothing"] = smoothing
            b.took(("dpo_label_smoothing",), "stages[dpo].label_smoothing")
            b.comment(("__train__", "label_smoothing"), ("dpo_label_smoothing",))
        elif loss in ("ipo", "hinge"):
            b.skip("dpo_label_smoothing", f"Axolotl does not pass it to the {loss} loss either")
        else:
            b.skip("dpo_label_smoothing", "TRL 1.16's sigmoid loss ignores label smoothing (conservative DPO is "
                   "gone); `loss_type: robust` with `label_smoothing` is the label-noise-robust loss")
    if loss == "simpo":
        if b.given("simpo_gamma") and number(cfg["simpo_gamma"]) is not None:
            out["simpo_gamma"] = number(cfg["simpo_gamma"])
            b.took(("simpo_gamma",), "stages[dpo].simpo_gamma")
            b.comment(("__train__", "simpo_gamma"), ("simpo_gamma",))
        if b.given("cpo_alpha"):
            sft_weight, sft_keys = number(cfg["cpo_alpha"]), ("cpo_alpha",)
        else:
            sft_weight = 1.0
            b.comments[("__train__", "sft_weight")] = ("no cpo_alpha: Axolotl leaves TRL's CPO default (1.0), a "
                                                       "supervised term on the chosen answers")
    else:
        for key in ("simpo_gamma", "cpo_alpha"):
            if b.given(key):
                b.skip(key, f"`rl: {b.cfg.get('rl')}` does not use it (SimPO only)")
        if b.given("rpo_alpha") and number(cfg["rpo_alpha"]) is not None:
            sft_weight, sft_keys = number(cfg["rpo_alpha"]), ("rpo_alpha",)
    if sft_weight is not None and sft_weight > 0:
        out["sft_weight"] = sft_weight
        if sft_keys:
            b.took(sft_keys, "stages[dpo].sft_weight")
            b.comment(("__train__", "sft_weight"), sft_keys, "the chosen answer's NLL (RPO)" if loss != "simpo"
                      else "CPO's behaviour-cloning term")
    elif sft_keys:
        b.took(sft_keys, "stages[dpo].sft_weight")
    return out


def _optimisation(b: Builder, stage: dict[str, Any]) -> None:
    cfg = b.cfg
    lr = number(cfg.get("learning_rate", cfg.get("lr")))
    lr_key = "learning_rate" if b.given("learning_rate") else "lr"
    if lr is None:
        raise ImportRefused("the Axolotl config has no `learning_rate`", "set `learning_rate`")
    _put(b, stage, "learning_rate", lr, (lr_key,))
    steps = integer(cfg.get("max_steps"))
    if steps is not None and steps > 0:
        _put(b, stage, "max_steps", steps, ("max_steps",))
        if b.given("num_epochs"):
            b.skip("num_epochs", "`max_steps` decides the length, in Axolotl as in ftplan")
    elif b.given("num_epochs") and number(cfg["num_epochs"]):
        _put(b, stage, "epochs", number(cfg["num_epochs"]), ("num_epochs",))
    for src, dst in (("micro_batch_size", "micro_batch"), ("gradient_accumulation_steps", "grad_accum")):
        if b.given(src) and integer(cfg[src]):
            note = "pairs per GPU per forward pass" if stage["kind"] in ("dpo", "orpo", "reward") and \
                dst == "micro_batch" else ""
            _put(b, stage, dst, integer(cfg[src]), (src,), note)
    precision, keys, note = _precision(b)
    _put(b, stage, "precision", precision, keys, note)
    if b.given("optimizer"):
        value = _converted("optimizer", cfg["optimizer"])
        if value is not None:
            _put(b, stage, "optimizer", value, ("optimizer",))
        else:
            b.skip("optimizer", f"ftplan's optimizers are adamw, adamw_8bit and paged_adamw_8bit, not "
                   f"`{cfg['optimizer']}`; adamw is used")
    if b.given("lr_scheduler"):
        value = str(cfg["lr_scheduler"]).strip().lower()
        if value in _SCHEDULERS:
            _put(b, stage, "lr_scheduler", value, ("lr_scheduler",))
        else:
            b.skip("lr_scheduler", f"ftplan's schedules are cosine, linear, constant and constant_with_warmup, not "
                   f"`{value}`; cosine is used")
    warmup_steps, warmup_ratio = integer(cfg.get("warmup_steps")), number(cfg.get("warmup_ratio"))
    if warmup_steps is not None:
        _put(b, stage, "warmup_steps", warmup_steps, ("warmup_steps",))
        if warmup_ratio is not None:
            b.skip("warmup_ratio", "`warmup_steps` is set too; ftplan takes one of them")
    elif warmup_ratio is not None and 0 <= warmup_ratio < 1:
        _put(b, stage, "warmup_ratio", warmup_ratio, ("warmup_ratio",))
    for key in ("weight_decay", "max_grad_norm"):
        if b.given(key) and number(cfg[key]) is not None:
            _put(b, stage, key, number(cfg[key]), (key,))


def _precision(b: Builder) -> tuple[str, tuple[str, ...], str]:
    """(precision, Axolotl keys, note) from ``bf16``/``bfloat16``/``fp16``/``float16``."""
    cfg = b.cfg
    given = tuple(k for k in ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32") if k in cfg)
    if on(cfg.get("bf16")) or on(cfg.get("bfloat16")):
        auto = str(cfg.get("bf16")).strip().lower() == "auto"
        return "bf16", given, ("Axolotl's `auto` is bf16 where the GPU has it (`ftplan check` says where not)"
                               if auto else "")
    if on(cfg.get("fp16")) or on(cfg.get("float16")):
        return "fp16", given, "mixed precision with loss scaling"
    return "fp32", given, "neither bf16 nor fp16: Axolotl trains in fp32"


def _memory_and_speed(b: Builder, stage: dict[str, Any], kind: str, base: str) -> None:
    cfg = b.cfg
    if b.given("gradient_checkpointing"):
        value = cfg["gradient_checkpointing"]
        word = value.strip().lower() if isinstance(value, str) else ""
        if word in ("offload", "offload_disk"):
            _put(b, stage, "gradient_checkpointing", "offload", ("gradient_checkpointing",),
                 "each layer's checkpoint in pinned host memory" + (
                     " (Axolotl's `offload_disk` writes them to disk)" if word == "offload_disk" else ""))
        else:
            _put(b, stage, "gradient_checkpointing", on(value), ("gradient_checkpointing",))
    attention = _attention(b, kind)
    if attention is not None:
        _put(b, stage, "attention", attention[0], attention[1])
    _distributed(b, stage)
    _kernels(b, stage, kind, base)


def _attention(b: Builder, kind: str) -> tuple[str, tuple[str, ...]] | None:
    cfg = b.cfg
    if b.given("attn_implementation"):
        value = _converted("attn_implementation", cfg["attn_implementation"])
        if value is not None:
            return value, ("attn_implementation",)
        b.skip("attn_implementation", f"ftplan's attention backends are sdpa, flash_attention_2, flash_attention_3, "
               f"flex_attention and eager, not `{cfg['attn_implementation']}`")
    for key, value in (("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa"),
                       ("flex_attention", "flex_attention"), ("eager_attention", "eager")):
        if on(cfg.get(key)):
            return value, (key,)
        if b.given(key):
            b.skip(key, f"false: ftplan's default backend, sdpa, is used (`attention` on the {kind} stage)")
    return None


_LIGER = ("liger_rms_norm", "liger_glu_activation", "liger_rope", "liger_fused_linear_cross_entropy",
          "liger_layer_norm", "liger_cross_entropy", "use_liger_kernel")


def _kernels(b: Builder, stage: dict[str, Any], kind: str, base: str) -> None:
    """``kernels: ftplan`` for Liger's kernels or Cut Cross-Entropy, where ftplan has kernels for the family."""
    cfg = b.cfg
    plugins = [str(p) for p in cfg.get("plugins") or []] if isinstance(cfg.get("plugins"), list) else []
    asked = tuple(k for k in _LIGER if on(cfg.get(k)))
    fused = [p for p in plugins if "liger" in p.lower() or "cut_cross_entropy" in p.lower()]
    if not asked and not fused:
        return
    family = next((m.family for m in MODELS.values() if base in m.hub_ids), None)
    keys = asked + (("plugins",) if fused else ())
    strategy = stage.get("distributed")
    strategy = strategy.get("strategy") if isinstance(strategy, dict) else strategy
    adapter = stage["adapter"]
    plain_lora = adapter["type"] == "full" or (adapter["type"] != "dora" and not adapter.get("dropout"))
    if kind in ("sft", "cpt") and family in KERNEL_FAMILIES and strategy not in ("zero3", "fsdp2") and plain_lora:
        _put(b, stage, "kernels", "ftplan", keys, "fused RMSNorm, SwiGLU, RoPE and linear cross-entropy")
        return
    if kind not in ("sft", "cpt"):
        why = "ftplan's fused kernels serve SFT and CPT stages"
    elif family not in KERNEL_FAMILIES:
        why = (f"ftplan's fused kernels cover the {', '.join(KERNEL_FAMILIES)} families; '{base}' is not one of "
               "them (or not in the catalog)")
    elif strategy in ("zero3", "fsdp2"):
        why = f"ftplan's fused loss and LoRA kernels read whole weights, which `{strategy}` shards (FT320, FT309)"
    else:
        why = "ftplan's fused LoRA kernels compute plain LoRA, without DoRA or adapter dropout (FT309)"
    for key in keys:
        b.skip(key, why)


def _distributed(b: Builder, stage: dict[str, Any]) -> None:
    cfg = b.cfg
    if b.given("deepspeed"):
        path = str(cfg["deepspeed"])
        strategy = _converted("deepspeed", cfg["deepspeed"])
        if strategy is None:
            b.skip("deepspeed", f"no ZeRO stage can be read from `{path}`; write `distributed: zero2` or `zero3`")
            return
        low = path.lower()
        offload_params = "offload" in low and ("all" in low or "param" in low)
        offload_optimizer = "offload" in low and not ("param" in low and "all" not in low)
        if offload_params or offload_optimizer:
            value: Any = {"strategy": strategy, "offload_optimizer": offload_optimizer,
                          "offload_params": offload_params}
        else:
            value = strategy
        _put(b, stage, "distributed", value, ("deepspeed",), "ftplan writes the DeepSpeed JSON itself")
        return
    fsdp_keys = tuple(k for k in ("fsdp", "fsdp_config", "fsdp_version") if on(cfg.get(k)))
    if not fsdp_keys:
        return
    raw = cfg.get("fsdp_config")
    conf: dict[str, Any] = raw if isinstance(raw, dict) else {}
    offload = on(conf.get("fsdp_offload_params", conf.get("offload_params")))
    value = {"strategy": "fsdp2", "offload_params": True} if offload else "fsdp2"
    _put(b, stage, "distributed", value, fsdp_keys, "PyTorch FSDP2; the wrapping and state-dict options are "
         "ftplan's own")


def _checkpoints(b: Builder, stage: dict[str, Any]) -> None:
    cfg = b.cfg
    has_eval = bool(number(cfg.get("val_set_size")) or 0)
    for key in ("eval_steps", "save_steps", "logging_steps", "save_total_limit"):
        if not b.given(key) or not integer(cfg[key]):
            continue
        if key == "eval_steps" and not has_eval:
            b.skip(key, "`val_set_size` holds out no validation split to evaluate on")
            continue
        _put(b, stage, key, integer(cfg[key]), (key,))
    if on(cfg.get("load_best_model_at_end")) and "eval_steps" in stage and "save_steps" in stage:
        _put(b, stage, "load_best_model_at_end", True, ("load_best_model_at_end",))
    if b.given("seed") and integer(cfg["seed"]) is not None:
        _put(b, stage, "seed", integer(cfg["seed"]), ("seed",))


def tracker_env(b: Builder, stage: dict[str, Any]) -> dict[str, str]:
    """``report_to`` from the trackers the config names, and the wandb/mlflow settings as environment variables."""
    cfg = b.cfg
    env: dict[str, str] = {}
    trackers: list[str] = []
    keys: list[str] = []
    for key in ("wandb_project", "wandb_entity", "wandb_name", "wandb_run_id", "wandb_watch", "wandb_mode",
                "wandb_log_model", "mlflow_tracking_uri", "mlflow_experiment_name"):
        if b.given(key) and str(cfg[key]).strip():
            env[key.upper()] = str(cfg[key])
            b.took((key,), f"hardware.env.{key.upper()}")
            b.comments[("hardware", "env", key.upper())] = f"from {key}"
            tracker = key.split("_", 1)[0]
            if tracker not in trackers:
                trackers.append(tracker)
            keys.append(key)
    for key, tracker in (("use_wandb", "wandb"), ("use_mlflow", "mlflow"), ("use_tensorboard", "tensorboard")):
        if on(cfg.get(key)):
            keys.append(key)
            b.took((key,), f"stages[{stage['kind']}].report_to")
            if tracker not in trackers:
                trackers.append(tracker)
    if trackers:
        _put(b, stage, "report_to", trackers, tuple(dict.fromkeys(keys)))
    return env
