"""The data stage: read, convert, tokenize, fit, split and pack every dataset, then write the output atomically.

``run_data_stage(args, args_sha256)`` writes into a temporary sibling of ``args.output_dir`` (``.<name>.tmp-<pid>``)
and renames it into place only when everything succeeded, so a failed stage leaves the previous output as it
was (though no longer complete: the entry point removed its stamp before the stage started, see ``stamps``).
Whether the stage needs to run at all is decided by the completion stamp alone; the manifest's fingerprint is
information for readers.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ftplan.data.rows import needs_chat_template
from ftplan.schemas.runtime_args import RuntimeArgs
from ftplan.schemas.stages import DataStage

from ..stamps import TOKENIZER_FILES
from .collect import Collected, collect
from .errors import DataError
from .manifest import MANIFEST_FORMAT, Manifest, TemplateReport, fingerprint
from .output import write_group
from .readers import file_sha256, source_digest
from .templates import ChatTemplate, resolve_template
from .tokenize import Encoder



def run_data_stage(args: RuntimeArgs, args_sha256: str) -> Manifest:
    """Run the data stage described by ``args`` (``args_sha256``, the digest of its args file, is not needed: the
    entry point records completion). Returns the manifest. Raises ``DataError`` with a message for the user when
    the data, the tokenizer or the template is unusable.
    """
    stage = args.stage
    if not isinstance(stage, DataStage):
        raise DataError(f"stage {stage.id!r} is a {stage.kind} stage, not a data stage")
    out = Path(args.output_dir)
    tokenizer, tok_source, revision = load_tokenizer(args)
    template = resolve_template(args.model.chat_template, tokenizer,
                                needed=any(needs_chat_template(d.format) for d in stage.datasets))
    digests = [source_digest(d.path, d.split) for d in stage.datasets]
    inputs = fingerprint_inputs(stage, args, digests, tokenizer_digests(tok_source, revision, tokenizer), template)
    fp = fingerprint(inputs)

    encoder = Encoder(tokenizer, template, stage.loss_on)
    with _quiet_datasets(), _staging(out) as tmp:
        got = collect(stage, encoder, digests, report_dir=out)
        _require_examples(got)
        groups = {g: write_group(g, examples, stage, tmp, got.origins.get(g))
                  for g, examples in sorted(got.groups.items())}
        manifest = Manifest(
            stage=stage.id, fingerprint=fp, inputs=inputs,
            chat_template=TemplateReport(source=template.source, sha256=inputs["chat_template"],
                                         masking=encoder.masking),
            datasets=got.reports, dropped=got.dropped, truncated=sum(r.truncated for r in got.reports),
            truncated_rows=got.truncated, warnings=got.warnings, groups=groups)
        manifest.write(tmp)
    _summarise(stage.id, manifest)
    return manifest


def load_tokenizer(args: RuntimeArgs) -> tuple[Any, str, str | None]:
    """Load the stage's tokenizer (with ``model.add_special_tokens`` added); returns it, its source, revision."""
    from transformers import AutoTokenizer

    model = args.model
    source = args.source.tokenizer if args.source is not None else (model.tokenizer or model.base)
    revision = model.revision if source == model.base and not Path(source).is_dir() else None
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision)
    except Exception as e:  # noqa: BLE001 - any loading failure is the user's to fix
        raise DataError(f"cannot load the tokenizer {source!r} (model.tokenizer / model.base): "
                        f"{type(e).__name__}: {e}") from None
    if model.add_special_tokens:
        tok.add_tokens(list(model.add_special_tokens), special_tokens=True)
    return tok, source, revision


def tokenizer_digests(source: str, revision: str | None, tokenizer: Any) -> dict[str, str]:
    """sha256 of each tokenizer file present (local folder or hub cache); the serialized fast tokenizer when
    none is found."""
    found: dict[str, str] = {}
    for name in TOKENIZER_FILES:
        path: Any = Path(source) / name
        if not Path(source).is_dir():
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(source, name, revision=revision)
            path = Path(path) if isinstance(path, str) else None
        if path is not None and path.is_file():
            found[name] = file_sha256(path)
    if not found and getattr(tokenizer, "is_fast", False):
        import hashlib

        found["backend"] = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
    return found


def fingerprint_inputs(stage: DataStage, args: RuntimeArgs, digests: list[str], tokenizer_files: dict[str, str],
                       template: ChatTemplate) -> dict[str, Any]:
    """Everything the output depends on, as a JSON-able dict (the stage id and output paths excluded)."""
    import hashlib

    import tokenizers
    import transformers

    settings = stage.model_dump(mode="json", exclude={"id"})
    return {
        "format": MANIFEST_FORMAT,
        "settings": settings,
        "data": digests,
        "tokenizer_files": tokenizer_files,
        "add_special_tokens": list(args.model.add_special_tokens),
        "chat_template": hashlib.sha256(template.text.encode("utf-8")).hexdigest(),
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    }


def _require_examples(got: Collected) -> None:
    for report_group in sorted(got.groups):
        if got.groups[report_group]:
            continue
        paths = [r.path for r in got.reports if r.group == report_group]
        first = next((d for d in got.dropped if d.dataset in paths), None)
        hint = f"; first dropped: {first.dataset} row {first.row}: {first.reason}" if first else ""
        raise DataError(f"no {report_group} examples left from {', '.join(paths)}: every row was dropped or "
                        f"the files are empty{hint}")


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh temporary folder next to ``out``; renamed to ``out`` on success, removed on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    import datasets

    was_disabled = datasets.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _summarise(stage_id: str, m: Manifest) -> None:
    rows_in = sum(r.rows_in for r in m.datasets)
    pct = 100.0 * m.truncated / rows_in if rows_in else 0.0
    _log(f"data {stage_id}: {rows_in} rows read, {len(m.dropped)} dropped, {m.truncated} truncated ({pct:.1f}%)")
    split = sum(r.split for r in m.datasets)
    if split:
        pieces = sum(r.pieces for r in m.datasets)
        _log(f"data {stage_id}: {split} text document(s) longer than max_seq_len split into pieces (raw text is never "
             f"truncated): {pieces} text examples in all")
    for name, g in m.groups.items():
        for split, s in g.splits.items():
            line = (f"  {name}/{split}: {s.tokens.examples} examples, {s.tokens.total} tokens "
                    f"({s.tokens.trained} trained), length p50 {s.tokens.p50} max {s.tokens.max}")
            if s.packing is not None:
                line += f", packed into {s.packing.rows} rows (fill {100 * s.packing.fill_ratio:.1f}%)"
            _log(line)
