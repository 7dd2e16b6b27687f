"""Where the pretraining step's time goes, by part, from the compiled step itself.

The step runs a few times under the JAX profiler. Every op XLA executes (a fusion, a dot, a
convolution, a copy) is an event of the trace, named by its instruction in the optimised
HLO module, and each instruction carries the name stack it was traced under
(``jvp(student)/SwinTransformer3D/layers2/blocks_0/attn/...``). The stack says which part of
the model it belongs to and whether it is the forward pass, its backward (``transpose(...)``)
or the teacher; :func:`part_of` reads it. The FLOPs of each instruction are those of the dots
and convolutions it holds, from their shapes in the same HLO text (multiply-adds of padded
positions included), so each part gets both its time and its FLOPs and so its achieved FLOP/s.

On the CPU, XLA runs independent ops at once (a convolution queued on the thread pool while a
fusion runs): where k ops are in flight, each is charged 1/k of that time, so the parts add up to
the time the step had any op running (:func:`wall_shares`). Missing from the table: the time
between ops (the host's dispatch), the difference between that sum and the wall-clock step.
Written and tested on XLA's CPU backend. On a GPU, matmuls and convolutions become library
custom calls (cuBLAS, cuDNN), which :func:`own_flops` does not read yet, and one op can launch
several kernels; neither has been checked on a device.
Used by ``launch/benchmark.py pretrain --profile``.
"""
from __future__ import annotations

import collections
import glob
import math
import re
import tempfile
from dataclasses import dataclass, field

_CONTROL = ("while", "conditional", "call")  # their events enclose their bodies' events


@dataclass
class Instr:
    name: str
    opcode: str
    dims: tuple[int, ...] | None          # array shape; None for tuples and tokens
    operands: list[str]
    attrs: str
    op_name: str
    calls: list[str] = field(default_factory=list)


def _matching(text: str, start: int) -> int:
    """Index just past the bracket group that opens at ``text[start]``."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for i in range(start, len(text)):
        ch = text[i]
        if ch in pairs:
            stack.append(pairs[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    return len(text)


_DIMS = re.compile(r"^[a-z]\w*\[([\d,]*)\]")
_LINE = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = ")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+) \(")


def parse_hlo(text: str) -> tuple[dict[str, Instr], dict[str, list[str]]]:
    """Instructions by name, and each computation's instruction names, from an HLO module's text."""
    instrs: dict[str, Instr] = {}
    comps: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            c = _COMP.match(line)
            if c and line.rstrip().endswith("{"):
                current = c.group(1)
                comps[current] = []
            continue
        rest = line[m.end():]
        if rest.startswith("("):
            end = _matching(rest, 0)
            shape, rest = rest[:end], rest[end:].lstrip()
            dims = None
        else:
            shape, _, rest = rest.partition(" ")
            d = _DIMS.match(shape)
            dims = tuple(int(x) for x in d.group(1).split(",") if x) if d else None
        paren = rest.find("(")
        if paren < 0:
            continue
        opcode = rest[:paren]
        end = _matching(rest, paren)
        operands = re.findall(r"%([\w.\-]+)", rest[paren:end])
        attrs = rest[end:]
        op = re.search(r'op_name="((?:[^"\\]|\\.)*)"', attrs)
        calls = re.findall(r"calls=%([\w.\-]+)", attrs)  # a fusion's computation
        instrs[m.group(1)] = Instr(m.group(1), opcode, dims, operands, attrs, op.group(1) if op else "", calls)
        if current is not None:
            comps[current].append(m.group(1))
    return instrs, comps


def _labels(attrs: str) -> tuple[str, str, str] | None:
    m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attrs)
    return m.groups() if m else None


def own_flops(ins: Instr, instrs: dict[str, Instr]) -> float:
    """2 x multiply-adds of a dot or convolution from its shapes; 0 for any other op."""
    if ins.dims is None or ins.opcode not in ("dot", "convolution"):
        return 0.0
    lhs = instrs.get(ins.operands[0]) if ins.operands else None
    if lhs is None or lhs.dims is None:
        return 0.0
    out = math.prod(ins.dims)
    if ins.opcode == "dot":
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
        contracted = [int(x) for x in m.group(1).split(",") if x] if m else []
        return 2.0 * out * math.prod(lhs.dims[i] for i in contracted)
    labels = _labels(ins.attrs)
    window = re.search(r"window=\{size=([\dx]+)", ins.attrs)
    if labels is None:
        return 0.0
    groups = re.search(r"feature_group_count=(\d+)", ins.attrs)
    in_features = lhs.dims[labels[0].index("f")] // (int(groups.group(1)) if groups else 1)
    taps = math.prod(int(x) for x in window.group(1).split("x")) if window else 1
    return 2.0 * out * taps * in_features


def flops_of(name: str, instrs: dict[str, Instr], comps: dict[str, list[str]], _memo=None) -> float:
    """FLOPs of one execution of an instruction: its own, or those of the fusion it calls.

    Control flow (while, conditional, call) counts 0: its bodies' ops are events of their own.
    """
    memo = {} if _memo is None else _memo
    if name in memo:
        return memo[name]
    ins = instrs[name]
    total = own_flops(ins, instrs)
    if ins.opcode == "fusion":
        for comp in ins.calls:
            total += sum(flops_of(n, instrs, comps, memo) for n in comps.get(comp, []))
    memo[name] = total
    return total


def _scope(name: str) -> str:
    """A named scope as it appears in a name stack: ``name/`` or, under a transform, ``jvp(name)``."""
    return rf"(?:^|[/(]){name}(?:[/)]|$)"


# The part an op belongs to, from its name stack: the first pattern that matches wins.
_STAGE_PARTS = [
    (r"layers(\d)c/", "stage {}: v2 conv block"),
    (r"layers(\d)/blocks_\d+/attn", "stage {}: window attention"),
    (r"layers(\d)/blocks_\d+/mlp", "stage {}: MLP"),
    (r"layers(\d)/blocks_\d+/", "stage {}: norms, shift, window partition"),
    (r"layers(\d)/downsample", "stage {}: patch merging"),
]
_PARTS = [
    (r"patch_embed", "patch embedding"),
    (_scope("views"), "views (affine resampling)"),
    (r"ProjectionHead", "projection heads"),
    (_scope("matching"), "patch matching (Sinkhorn / dual softmax, losses)"),
    (_scope("infonce"), "global InfoNCE"),
    (_scope("optimizer"), "optimiser (AdamW)"),
    (_scope("ema"), "EMA teacher update"),
]
PART_ORDER = (["patch embedding"]
              + [fmt.format(s) for s in "1234" for _, fmt in _STAGE_PARTS]
              + [label for _, label in _PARTS[1:]] + ["other (guard, queue, metrics, copies)"])


def part_of(op_name: str) -> tuple[str, str]:
    """``(part, pass)`` of an op from its name stack; pass is 'forward', 'backward' or 'teacher'."""
    if not op_name:
        return PART_ORDER[-1], "forward"
    first = op_name.split(";")[0]
    if "transpose(" in first:
        kind = "backward"
    elif re.search(_scope("teacher"), first):
        kind = "teacher"
    else:
        kind = "forward"
    for pattern, label in _PARTS[:1]:
        if re.search(pattern, first):
            return label, kind
    for pattern, fmt in _STAGE_PARTS:
        m = re.search(pattern, first)
        if m:
            return fmt.format(m.group(1)), kind
    for pattern, label in _PARTS[1:]:
        if re.search(pattern, first):
            return label, kind
    return PART_ORDER[-1], kind


def op_intervals(trace_dir: str, module: str) -> list[tuple[str, float, float]]:
    """``(instruction, start_ns, end_ns)`` of every op of one HLO module run in a profiler trace.

    On the CPU an op's event can end before the op does: a convolution, for one, is handed to the
    thread pool and its event covers the hand-over only. XLA then records an ``end: <op>`` event
    when the work completes, linked to the op's event by a flow id (the op's ``_p`` stat is the end
    event's ``_c``); an op ends at the later of the two. On a GPU the device planes' kernels are used.
    """
    import jax

    files = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    if not files:
        raise RuntimeError(f"the profiler wrote no trace under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(files[0])
    planes = [p for p in data.planes if p.name.startswith("/device:")] or \
             [p for p in data.planes if p.name == "/host:CPU"]
    events = [ev for plane in planes for line in plane.lines for ev in line.events]
    ends = {}
    for ev in events:
        if ev.name.startswith("end: "):
            flow = dict(ev.stats).get("_c")
            if flow is not None:
                ends[flow] = ev.start_ns
    out = []
    for ev in events:
        stats = dict(ev.stats)
        if stats.get("hlo_module") == module and "hlo_op" in stats:
            out.append((stats["hlo_op"], ev.start_ns, max(ev.end_ns, ends.get(stats.get("_p"), 0.0))))
    return out


def wall_shares(intervals: list[tuple[str, float, float]]) -> dict[str, tuple[float, int]]:
    """``{op: (seconds, executions)}``: the wall clock split among the ops running at each moment.

    Where k ops are in flight at once, each is charged 1/k of that time, so the ops' seconds add
    up to the time the step had any op in flight (on this CPU, ops overlap: a convolution queued on
    the thread pool while a fusion runs).
    """
    bounds = sorted({t for _, s, e in intervals for t in (s, e)})
    index = {t: i for i, t in enumerate(bounds)}
    starts = collections.defaultdict(list)
    stops = collections.defaultdict(list)
    for k, (_, s, e) in enumerate(intervals):
        if e > s:
            starts[index[s]].append(k)
            stops[index[e]].append(k)
    seconds = [0.0] * len(intervals)
    active: set[int] = set()
    for i, t in enumerate(bounds[:-1]):
        active.difference_update(stops[i])
        active.update(starts[i])
        if active:
            share = (bounds[i + 1] - t) * 1e-9 / len(active)
            for k in active:
                seconds[k] += share
    out: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for k, (op, _, _) in enumerate(intervals):
        out[op][0] += seconds[k]
        out[op][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def _op_name(ins: Instr, instrs: dict[str, Instr], comps: dict[str, list[str]], depth: int = 0) -> str:
    """An instruction's name stack. XLA drops it from some fusions: then that of the fusion's first
    dot or convolution, else of any instruction inside, else of the first operand that has one."""
    if ins.op_name or depth > 3:
        return ins.op_name
    inner = [instrs[n] for c in ins.calls for n in comps.get(c, []) if n in instrs]
    for i in sorted(inner, key=lambda i: i.opcode not in ("dot", "convolution")):
        if i.op_name:
            return i.op_name
    for name in ins.operands:
        if name in instrs and (found := _op_name(instrs[name], instrs, comps, depth + 1)):
            return found
    return ""


def profile_table(compiled, run_step, steps: int = 2, top_k: int = 40) -> dict:
    """Profile ``steps`` calls of ``run_step()`` (each runs ``compiled`` once and blocks).

    Returns ``{"rows": [{part, forward_s, backward_s, teacher_s, total_s, gflop}], "op_s",
    "steps", "top_ops"}``: seconds and GFLOP per step; ``top_ops``, the ``top_k`` slowest ops.
    """
    import jax

    text = compiled.as_text()
    module = re.match(r"HloModule ([\w.\-]+)", text).group(1)
    instrs, comps = parse_hlo(text)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(steps):
                run_step()
        intervals = op_intervals(d, module)
    # control flow's events enclose its bodies' ops, which are events of their own
    ops = wall_shares([iv for iv in intervals if iv[0] not in instrs or instrs[iv[0]].opcode not in _CONTROL])
    rows = {p: {"part": p, "forward_s": 0.0, "backward_s": 0.0, "teacher_s": 0.0, "gflop": 0.0}
            for p in PART_ORDER}
    memo: dict = {}
    unknown = 0.0
    top = []
    for name, (sec, count) in ops.items():
        ins = instrs.get(name)
        if ins is None:
            unknown += sec
            continue
        op_name = _op_name(ins, instrs, comps)
        part, kind = part_of(op_name)
        gflop = flops_of(name, instrs, comps, memo) * count / steps / 1e9
        rows[part][f"{kind}_s"] += sec / steps
        rows[part]["gflop"] += gflop
        top.append({"op": name, "part": part, "pass": kind, "s": sec / steps, "runs": count // steps,
                    "gflop": gflop, "op_name": op_name.split(";")[0]})
    rows[PART_ORDER[-1]]["forward_s"] += unknown / steps
    out = []
    for r in rows.values():
        r["total_s"] = r["forward_s"] + r["backward_s"] + r["teacher_s"]
        if r["total_s"] > 0 or r["gflop"] > 0:
            out.append(r)
    top.sort(key=lambda t: -t["s"])
    return {"rows": out, "op_s": sum(r["total_s"] for r in out), "steps": steps, "top_ops": top[:top_k]}


def format_table(prof: dict, step_s: float | None = None, peak_tflops: float | None = None) -> str:
    """The profile as a Markdown table, largest parts first within the model's order."""
    total = prof["op_s"] or 1.0
    head = ("| part | forward (ms) | backward (ms) | teacher (ms) | total (ms) | share | GFLOP | GFLOP/s |"
            + (" % of peak |" if peak_tflops else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    gflop = 0.0
    for r in prof["rows"]:
        rate = r["gflop"] / r["total_s"] if r["total_s"] > 0 else 0.0
        gflop += r["gflop"]
        cells = [r["part"], f"{r['forward_s'] * 1e3:.1f}", f"{r['backward_s'] * 1e3:.1f}",
                 f"{r['teacher_s'] * 1e3:.1f}", f"{r['total_s'] * 1e3:.1f}", f"{r['total_s'] / total:.1%}",
                 f"{r['gflop']:.2f}", f"{rate:.1f}"]
        if peak_tflops:
            cells.append(f"{rate / (peak_tflops * 1e3):.1%}")
        lines.append("| " + " | ".join(cells) + " |")
    rate = gflop / total
    cells = ["**all ops**", "", "", "", f"{total * 1e3:.1f}", "100%", f"{gflop:.2f}", f"{rate:.1f}"]
    if peak_tflops:
        cells.append(f"{rate / (peak_tflops * 1e3):.1%}")
    lines.append("| " + " | ".join(cells) + " |")
    if step_s:
        lines.append(f"\nwall-clock step {step_s * 1e3:.1f} ms, of which ops ran {total * 1e3:.1f} ms (where ops "
                     f"overlap, each is charged its share of the time)")
    return "\n".join(lines)
