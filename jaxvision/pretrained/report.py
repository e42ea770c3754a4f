"""What `load_pretrained` did with every entry, and why, in words that name the fix.

`LoadReport` lists each template and checkpoint entry as loaded, adapted,
re-initialised, dropped, missing, unexpected or mismatched, with its reason;
`summary()` groups the reasons across encoder blocks. The helpers below write those
reasons: which dimension of a mismatched shape differs and what to pass instead, why
an entry is missing or unexpected (depth, representation layer, head, CLS token), and
which model a checkpoint's ResNet stem (or its absence) needs. The loading itself is
in `jaxvision.pretrained.load`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from jaxvision.pretrained.layout import BLOCK_RE


class PretrainedLoadError(ValueError):
    """A checkpoint does not fit the model; ``.report`` says entry by entry why."""

    def __init__(self, message: str, report: "LoadReport"):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class LoadReport:
    """What `load_pretrained` did with every entry. Dicts map a parameter name
    ('Transformer/encoderblock_0/LayerNorm_0/scale', or the source key for entries the
    model cannot use) to the reason."""

    source: str
    format: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: dict[str, str] = dataclasses.field(default_factory=dict)
    unexpected: dict[str, str] = dataclasses.field(default_factory=dict)
    mismatched: dict[str, str] = dataclasses.field(default_factory=dict)
    adapted: dict[str, str] = dataclasses.field(default_factory=dict)
    reinitialized: dict[str, str] = dataclasses.field(default_factory=dict)
    dropped: dict[str, str] = dataclasses.field(default_factory=dict)
    ignored: int = 0  # source entries that are not model parameters (optimizer state)
    hints: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, max_items: int = 12) -> str:
        lines = [f"{self.source} ({self.format}): {len(self.loaded)} loaded"]
        if self.ignored:
            lines[0] += f", {self.ignored} non-parameter entries ignored"
        for title, entries in (("mismatched", self.mismatched), ("missing", self.missing),
                               ("unexpected", self.unexpected), ("adapted", self.adapted),
                               ("re-initialised", self.reinitialized), ("dropped", self.dropped)):
            if not entries:
                continue
            grouped = _group(entries)
            lines.append(f"{title} ({len(entries)}):")
            lines += [f"  {name}: {why}" for name, why in grouped[:max_items]]
            if len(grouped) > max_items:
                lines.append(f"  ... and {len(grouped) - max_items} more")
        if self.hints:
            lines.append(f"model hints: {self.hints}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _group(entries: Mapping[str, str]) -> list[tuple[str, str]]:
    """Collapse entries: a whole block with one reason becomes encoderblock_3/* (16 entries),
    and the same entry/reason across blocks becomes encoderblock_{0..11}/..."""
    per_block: dict[tuple[str, str], list[str]] = {}
    for name, why in entries.items():
        match = re.match(r"^Transformer/encoderblock_(\d+)/", name)
        if match:
            per_block.setdefault((match.group(1), why), []).append(name)
    collapsed: dict[str, str] = {}
    for name, why in entries.items():
        match = re.match(r"^Transformer/encoderblock_(\d+)/", name)
        members = per_block.get((match.group(1), why), []) if match else []
        if len(members) >= 4:
            collapsed[f"Transformer/encoderblock_{match.group(1)}/* ({len(members)} entries)"] = why
        else:
            collapsed[name] = why
    groups: dict[tuple[str, str], list[int]] = {}
    order = []
    for name, why in collapsed.items():
        match = re.match(r"^(Transformer/encoderblock_)(\d+)(/.*)$", name)
        key = (f"{match.group(1)}{{#}}{match.group(3)}", why) if match else (name, why)
        if key not in groups:
            groups[key] = []
            order.append(key)
        if match:
            groups[key].append(int(match.group(2)))
    out = []
    for name, why in order:
        blocks = groups[(name, why)]
        if len(blocks) > 1:
            name = name.replace("{#}", "{" + _ranges(sorted(blocks)) + "}")
        elif blocks:
            name = name.replace("{#}", str(blocks[0]))
        out.append((name, why))
    return out


def _ranges(values: list[int]) -> str:
    parts, start = [], values[0]
    for prev, cur in zip(values, values[1:] + [None]):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}..{prev}")
            start = cur
    return ",".join(parts)


# --------------------------------------------------------------------------- reasons

_ROLES = (
    (r"^embedding/kernel$", ("patch height", "patch width", "input channels", "width")),
    (r"^embedding/bias$", ("width",)),
    (r"^cls$", ("", "", "width")),
    (r"/(LayerNorm_\d+|encoder_norm)/(scale|bias)$", ("width",)),
    (r"/(query|key|value)/kernel$", ("width", "num_heads", "head_dim")),
    (r"/(query|key|value)/bias$", ("num_heads", "head_dim")),
    (r"/out/kernel$", ("num_heads", "head_dim", "width")),
    (r"/out/bias$", ("width",)),
    (r"/Dense_0/kernel$", ("width", "mlp_dim")),
    (r"/Dense_0/bias$", ("mlp_dim",)),
    (r"/Dense_1/kernel$", ("mlp_dim", "width")),
    (r"/Dense_1/bias$", ("width",)),
    (r"^pre_logits/kernel$", ("width", "representation_size")),
    (r"^pre_logits/bias$", ("representation_size",)),
    (r"^head/kernel$", ("head input (width, or representation_size)", "num_classes")),
    (r"^head/bias$", ("num_classes",)),
)


def explain_mismatch(name: str, ckpt_shape, model_shape) -> str:
    """Which dimension of entry `name` differs (by its role: width, num_heads, ...) and
    the argument that fixes it, where one does."""
    ckpt_shape, model_shape = tuple(ckpt_shape), tuple(model_shape)
    base = f"checkpoint {ckpt_shape} vs model {model_shape}"
    if len(ckpt_shape) != len(model_shape):
        return f"{base}: different rank"
    roles = next((r for pattern, r in _ROLES if re.search(pattern, name)), ())
    reasons, fixes = [], []
    for role, a, b in zip(roles, ckpt_shape, model_shape):
        if a != b and role:
            reasons.append(f"{role} {a} vs {b}")
            if role == "input channels":
                fixes.append("pass adapt_channels=True to sum/replicate the filters over channels")
            elif role.startswith("patch"):
                fixes.append("use the checkpoint's patch size (patch embeddings are not resampled)")
            elif role == "num_classes":
                fixes.append("pass head='reset' for a new zero-initialised head")
    why = "; ".join(reasons) or "different shape"
    return f"{base}: {why}" + (f" ({'; '.join(dict.fromkeys(fixes))})" if fixes else "")


def check_hybrid(ckpt_stages, model_stages, report: LoadReport) -> None:
    """A ResNet stem of another depth (or none) cannot load unit by unit: say which model fits."""
    if ckpt_stages == model_stages:
        return
    from jaxvision.models.vit import HYBRID_STAGES

    def describe(stages):
        if stages is None:
            return "no ResNet stem (a plain ViT)"
        names = [name for name, s in HYBRID_STAGES.items() if s == tuple(stages)]
        return f"a ResNet stem with stages {tuple(stages)}" + (f" ({names[0]})" if names else "")

    if ckpt_stages is None:
        fix = "build a plain ViT (a variant such as 'B/16', resnet_stages=None)"
    else:
        names = [name for name, s in HYBRID_STAGES.items() if s == tuple(ckpt_stages)]
        fix = (f"build the model with resnet_stages={tuple(ckpt_stages)}"
               + (f" (variant '{names[0]}+<ViT>/<stride>', e.g. '{names[0]}+B/16')" if names else ""))
    raise PretrainedLoadError(f"the checkpoint has {describe(ckpt_stages)}, the model {describe(model_stages)}: "
                              f"{fix}", report)


def why_missing(key: str, ckpt_depth: int, params) -> str:
    match = BLOCK_RE.match(key)
    if match and int(match.group(1)) >= ckpt_depth:
        return f"the checkpoint has {ckpt_depth} encoder blocks (depth)"
    if key.startswith("pre_logits/"):
        return "the checkpoint has no representation layer: build the model with representation_size=None"
    if key.startswith("head/"):
        return "the checkpoint has no head: pass head='reset' (or 'auto')"
    if key == "cls":
        return "the checkpoint has no CLS token (a GAP model): build the model with pool='gap'"
    return "not in the checkpoint"


def why_unexpected(key: str, ckpt_depth: int, model_depth: int, tmpl) -> str:
    match = BLOCK_RE.match(key)
    if match and int(match.group(1)) >= model_depth:
        return f"the checkpoint has {ckpt_depth} encoder blocks, the model {model_depth} (depth)"
    if key.startswith("pre_logits/"):
        return ("the model has no representation layer (representation_size=None): pass "
                "drop_representation=True to drop it")
    if key.startswith("head/"):
        return "the model has no head (num_classes=0)"
    if key == "cls":
        return "the model has no CLS token (pool='gap'); build it with pool='cls' to use it"
    return "no parameter of this name in the model"
