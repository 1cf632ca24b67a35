"""ftplan: a declarative pipeline compiler for LLM fine-tuning.

One typed YAML file describes data prep -> SFT -> DPO -> LoRA merge -> GGUF export. ftplan checks it offline
against the declared target GPUs (schema, stage graph, pre-launch rules, peak VRAM per stage) and compiles it
into a byte-stable plan of accelerate/DeepSpeed configs, bash and Slurm scripts, ``plan.json`` and ``plan.md``.

This package never imports torch, transformers or the runtime (``ftplan_runtime``).
"""

__version__ = "0.1.0"
