"""The config reference (docs/config.md), generated from the config code so that it cannot drift.

Every field's meaning is the comment on (or just above) the line that sets it in the
function that builds its block; a test fails when a field has none or when docs/config.md
differs from what this module writes:

    python -m s2dc_jax.tasks.config_doc --out docs/config.md
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import re
import tokenize
from pathlib import Path

import ml_collections

from s2dc_jax._cli import CONFIG_DIRS, load_config

from s2dc_jax.data import pipeline
from s2dc_jax.data.view_params import ViewRanges
from s2dc_jax.objectives import s2dc
from s2dc_jax.tasks import finetune_config, pretrain_config, pretrain_eval

CONFIGS = CONFIG_DIRS[0]  # the checkout's configs/: this generator writes the checkout's docs/config.md
_ASSIGN = re.compile(r"^\s*((?:c\.[\w.]+\s*,\s*)*c\.[\w.]+)\s*=")


def comments_of(fn, prefix: str = "") -> dict[str, str]:
    """``{field: comment}`` for the ``c.<field> = ...`` lines of ``fn``'s source (trailing or preceding comments)."""
    src = inspect.getsource(fn)
    lines = src.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            trailing[tok.start[0] - 1] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = _ASSIGN.match(line)
        if not m:
            continue
        text = trailing.get(i, "") if not line.lstrip().startswith("#") else ""
        if not text:  # a block comment right above the line
            j, block = i - 1, []
            while j >= 0 and lines[j].lstrip().startswith("#"):
                block.insert(0, lines[j].lstrip().lstrip("#").strip())
                j -= 1
            text = " ".join(block)
        for target in m.group(1).split(","):
            out[prefix + target.strip()[len("c."):]] = text
    return out


def _view_comments() -> dict[str, str]:
    src = inspect.getsource(ViewRanges)
    out = {}
    for f in dataclasses.fields(ViewRanges):
        m = re.search(rf"^\s*{f.name}\s*:.*?#\s*(.+)$", src, flags=re.M)
        out[f"data.views.{f.name}"] = m.group(1).strip() if m else ""
    return out


def _leaves(cfg, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def pretrain_fields() -> tuple[dict, dict]:
    """(defaults, meanings) of every pretraining field."""
    meanings = {**comments_of(pipeline.default_data_config, "data."), **comments_of(s2dc.default_ssl_config, "ssl."),
                **comments_of(pretrain_eval.default_eval_config, "eval."), **_view_comments(),
                **comments_of(pretrain_config.pretrain_config)}
    return _leaves(pretrain_config.pretrain_config()), meanings


def finetune_fields() -> tuple[dict, dict]:
    """(defaults, meanings) of every fine-tuning field (segmentation's defaults where tasks differ)."""
    return _leaves(finetune_config.base_config("segmentation")), comments_of(finetune_config.base_config)


def undocumented() -> list[str]:
    """Fields with no comment in the code: the reference would say nothing about them."""
    missing = []
    for defaults, meanings in (pretrain_fields(), finetune_fields()):
        missing += [k for k in defaults if not meanings.get(k)]
    return missing


def _value(v) -> str:
    if isinstance(v, ml_collections.FieldReference):
        v = v.get()
    return "None" if v is None else repr(v).replace("|", "\\|")


def _table(defaults: dict, meanings: dict) -> list[str]:
    rows = ["| field | default | meaning |", "|---|---|---|"]
    rows += [f"| `{k}` | `{_value(v)}` | {meanings.get(k, '').replace('|', '/')} |" for k, v in defaults.items()]
    return rows


def _differences(base: dict, files, arg=None) -> list[str]:
    rows = ["| config | fields that differ from the defaults |", "|---|---|"]
    for f in files:
        c = _leaves(load_config(str(f) + (f":{arg}" if arg else "")))
        diff = [f"`{k}={_value(v)}`" for k, v in c.items() if k not in base or _value(base[k]) != _value(v)]
        rows.append(f"| `{f.relative_to(CONFIGS.parent)}` | {', '.join(diff) or '(none)'} |")
    return rows


def render() -> str:
    """The whole of docs/config.md."""
    pre, pre_m = pretrain_fields()
    fine, fine_m = finetune_fields()
    out = ["# Config reference", "",
           "Generated from the config code by `python -m s2dc_jax.tasks.config_doc --out docs/config.md`",
           "(tests/test_config_doc.py fails when this page and the code disagree). Set any field on the",
           "command line with `--config.FIELD=VALUE`, e.g. `--config.optim.lr=1e-4`, `--config.model.depths='(2,2,2,2)'`;",
           "`--print_config` prints the resolved config and exits.", "",
           "## Pretraining (`s2dc-pretrain`, `launch/pretrain.py`)", "",
           "Defaults of `s2dc_jax.tasks.pretrain_config.pretrain_config()` (the paper's setup); the presets",
           "change the fields listed below the table.", ""]
    out += _table(pre, pre_m)
    out += ["", "### Presets", ""]
    out += _differences(pre, sorted(CONFIGS.glob("*.py")))
    out += ["", "`:tiny` after any preset (`--config=mri6k:tiny`) shrinks it for a smoke run.", "",
            "## Fine-tuning (`s2dc-finetune`, `launch/finetune.py`)", "",
            "Defaults of `s2dc_jax.tasks.finetune_config.base_config(task)` (segmentation shown; classification",
            "and the image-to-image tasks differ in `data.target_key` and `loss.name`).", ""]
    out += _table(fine, fine_m)
    out += ["", "### Dataset configs", ""]
    out += _differences(fine, sorted(CONFIGS.glob("finetune/*.py")))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the config reference (docs/config.md).")
    ap.add_argument("--out", default=str(CONFIGS.parent / "docs" / "config.md"))
    args = ap.parse_args(argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
