"""Collectives on tensor views, checked against a plain Python model.

gloo in torch 2.13 mis-reduces strided views too, so the reference here is
independent: every rank knows every rank's input (a function of the rank),
computes the expected result on contiguous copies, and checks both the view
and every byte of its base outside the view (a sentinel that must survive).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

SENTINEL = -777.0
BASE_SHAPE = (8, 12)


def view_kinds():
    """name -> function(base) giving a view of a (8, 12) base; each view has
    an element count divisible by 2, 3 and 4 where a collective splits it."""
    return {
        "step": lambda b: b[:, ::2],                        # 8x6, stride 2
        "offset": lambda b: b[1:7, 3:9],                    # 6x6 at an offset
        "transpose": lambda b: b[:6, :4].t(),               # 4x6, transposed
        "view_of_view": lambda b: b[::2, 1::3][1:, :],      # 3x4, two steps
        "row": lambda b: b[3, :],                           # contiguous, offset
        "column": lambda b: b[:, 5],                        # 8 elements, stride 12
    }


def _data(rank: int, shape, salt: int = 0) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    return (torch.arange(n, dtype=torch.float32).reshape(shape) * (rank + 1) + 10 * rank + salt)


class Slot:
    """A view into a sentinel-filled base; remembers which base elements it covers."""

    def __init__(self, make_view):
        self.base = torch.full(BASE_SHAPE, SENTINEL)
        self.view = make_view(self.base)
        mask = torch.zeros(BASE_SHAPE, dtype=torch.bool)
        make_view(mask).fill_(True)
        self.outside = ~mask

    def fill(self, values: torch.Tensor) -> "Slot":
        self.view.copy_(values.reshape(self.view.shape))
        return self

    def untouched(self) -> bool:
        return bool((self.base[self.outside] == SENTINEL).all())


class Checks:
    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size
        self.failures: list[str] = []
        self.count = 0

    def expect(self, what: str, slot: Slot, want: torch.Tensor):
        self.count += 1
        got = slot.view.contiguous().reshape(-1)
        if not torch.equal(got, want.reshape(-1).to(got.dtype)):
            self.failures.append(f"{what}: got {got[:8].tolist()} want {want.reshape(-1)[:8].tolist()}")
        if not slot.untouched():
            bad = (slot.base != SENTINEL) & slot.outside
            self.failures.append(f"{what}: wrote outside the view at base indices "
                                 f"{bad.nonzero().tolist()[:6]}")

    def expect_untouched(self, what: str, slot: Slot):
        self.count += 1
        if not slot.untouched():
            self.failures.append(f"{what}: wrote outside the view")


def check_view(ck: Checks, name: str, make_view):
    r, n = ck.rank, ck.size
    shape = make_view(torch.empty(BASE_SHAPE)).shape
    numel = make_view(torch.empty(BASE_SHAPE)).numel()
    inputs = [_data(q, shape) for q in range(n)]

    for op, combine in ((dist.ReduceOp.SUM, lambda ts: sum(ts)),
                        (dist.ReduceOp.MAX, lambda ts: torch.stack(ts).amax(0))):
        s = Slot(make_view).fill(inputs[r])
        dist.all_reduce(s.view, op=op)
        ck.expect(f"all_reduce {op} {name}", s, combine(inputs))

    s = Slot(make_view).fill(inputs[r])
    dist.broadcast(s.view, src=n - 1)
    ck.expect(f"broadcast {name}", s, inputs[n - 1])

    s = Slot(make_view).fill(inputs[r])
    dist.reduce(s.view, dst=0)
    ck.expect(f"reduce {name}", s, sum(inputs) if r == 0 else inputs[r])

    # Gathers: the input is a view, and so is every output.
    src = Slot(make_view).fill(inputs[r])
    outs = [Slot(make_view) for _ in range(n)]
    dist.all_gather([o.view for o in outs], src.view)
    for q in range(n):
        ck.expect(f"all_gather {name} from {q}", outs[q], inputs[q])
    ck.expect(f"all_gather input {name}", src, inputs[r])

    outs = [Slot(make_view) for _ in range(n)]
    dist.gather(src.view, [o.view for o in outs] if r == 0 else None, dst=0)
    if r == 0:
        for q in range(n):
            ck.expect(f"gather {name} from {q}", outs[q], inputs[q])

    out = Slot(make_view)
    pieces = [Slot(make_view).fill(_data(q, shape, salt=100)) for q in range(n)]
    dist.scatter(out.view, [p.view for p in pieces] if r == 1 % n else None, src=1 % n)
    ck.expect(f"scatter {name}", out, _data(r, shape, salt=100))

    out = Slot(make_view)
    ins = [Slot(make_view).fill(_data(r, shape, salt=q)) for q in range(n)]
    dist.reduce_scatter(out.view, [i.view for i in ins])
    ck.expect(f"reduce_scatter {name}", out, sum(_data(q, shape, salt=r) for q in range(n)))

    outs = [Slot(make_view) for _ in range(n)]
    ins = [Slot(make_view).fill(_data(r, shape, salt=q)) for q in range(n)]
    dist.all_to_all([o.view for o in outs], [i.view for i in ins])
    for q in range(n):
        ck.expect(f"all_to_all {name} from {q}", outs[q], _data(q, shape, salt=r))

    if numel % n == 0:
        _check_single_tensor_forms(ck, name, make_view, numel)

    if n > 1:
        s = Slot(make_view).fill(inputs[r])
        if r == 0:
            dist.send(s.view, dst=1)
            ck.expect(f"send {name}", s, inputs[0])
        elif r == 1:
            dist.recv(s.view, src=0)
            ck.expect(f"recv {name}", s, inputs[0])


def _strided_piece(piece: int):
    """A view of `piece` elements, stride 3 from offset 1, over a base."""
    return lambda b: b.reshape(-1)[1::3][:piece]


def _check_single_tensor_forms(ck: Checks, name: str, make_view, numel: int):
    """The *_tensor / *_single collectives, whose one tensor holds n pieces."""
    r, n = ck.rank, ck.size
    piece = numel // n
    shape = make_view(torch.empty(BASE_SHAPE)).shape
    whole = [_data(q, shape).reshape(-1) for q in range(n)]

    out = Slot(_strided_piece(piece))
    src = Slot(make_view).fill(whole[r])
    dist.reduce_scatter_tensor(out.view, src.view)
    ck.expect(f"reduce_scatter_tensor {name}", out, sum(whole)[r * piece:(r + 1) * piece])
    ck.expect(f"reduce_scatter_tensor input {name}", src, whole[r])

    out = Slot(make_view)
    src = Slot(_strided_piece(piece)).fill(whole[r][:piece])
    dist.all_gather_into_tensor(out.view, src.view)
    ck.expect(f"all_gather_into_tensor {name}", out, torch.cat([w[:piece] for w in whole]))

    if shape[0] % n == 0:  # torch splits the first dimension evenly
        out = Slot(make_view)
        src = Slot(make_view).fill(whole[r])
        dist.all_to_all_single(out.view, src.view)
        ck.expect(f"all_to_all_single {name}", out,
                  torch.cat([w[r * piece:(r + 1) * piece] for w in whole]))


def check_overlap_refused(ck: Checks):
    """An output whose elements alias (expand) is refused on every rank before
    any peer is involved, and the group stays usable."""
    out = torch.zeros(1).expand(6)
    for what, call in (("all_reduce", lambda: dist.all_reduce(out)),
                       ("broadcast", lambda: dist.broadcast(out, src=0)),
                       ("all_gather", lambda: dist.all_gather([out] * ck.size, torch.ones(6))),
                       ("recv", lambda: dist.recv(out, src=(ck.rank + 1) % ck.size))):
        ck.count += 1
        try:
            call()
            ck.failures.append(f"{what} into an expand()ed tensor was accepted")
        except ValueError as e:
            if "overlap" not in str(e):
                ck.failures.append(f"{what}: unclear error {e}")
    x = torch.ones(4)
    dist.all_reduce(x)
    ck.count += 1
    if not torch.equal(x, torch.full((4,), float(ck.size))):
        ck.failures.append(f"all_reduce after refusals gave {x.tolist()}")
