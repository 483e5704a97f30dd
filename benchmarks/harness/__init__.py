"""The benchmark harness behind ``hypkern bench``: kernel micro-benchmarks and trainer
throughput, with result tables.

Modules: ``timing`` (synchronised timing, peak memory probes, machine stamp, copy/matmul
ceilings), ``cases`` (ops, losses, sizes, the cost model, inputs, the float64 reference),
``impls`` (each implementation, peers included), ``runner`` (groups, suites, the subprocess
runner), ``tables`` (CSV/JSON/Markdown/plot, issue 8 targets), ``trainer`` (unlearning
throughput) and ``cli`` (``python -m benchmarks.harness.cli``, what ``hypkern bench`` runs).

What is measured
----------------
For every Lorentz op (``pairwise_inner``, ``pairwise_dist``, ``dist``, ``exp_map0``,
``log_map0``, ``half_aperture``, ``oxy_angle``) and loss (Lorentz and CLIP contrastive,
entailment), three passes, each timed on its own:

* ``fwd``: the forward under ``torch.no_grad()`` (what inference pays);
* ``fwd+bwd``: forward with autograd, then ``torch.autograd.grad(out, inputs, g)``: one
  training step of the op;
* ``bwd``: the backward part of those same ``fwd+bwd`` calls (the timer is read between
  forward and backward; CUDA events on a GPU), so it costs no extra calls.

for each implementation usable on the device: the eager reference (``reference``), the
reference under ``torch.compile`` (``compile``; compile time is in the warm-up, not the
timings), the kernel backends (``triton`` on CUDA only, never its interpreter; ``native``),
the fused losses of ``hypkern.losses``, and the peers a user would otherwise pick: geoopt's
Lorentz ``dist``/``inner``/``expmap0``/``logmap0`` (``geoopt``), open_clip's ``ClipLoss``
(``open_clip``) and Inf-CL's loss (``inf_cl``, CUDA only). A bare ``x @ y.T`` (``matmul``)
is timed beside every matmul-shaped case as the bound those kernels are judged against, and
``x * 1.0`` (``copy``: read N x D, write a fresh N x D, and the same in backward) beside the
two maps.

Timing: median of at least ``min_reps`` calls (more until ``min_time`` seconds of samples),
after warm-up calls (at least one, which also compiles); CUDA times come from CUDA events
around each call (after ``torch.cuda.synchronize``). The 25th/75th percentiles are kept.

Cost model (the numbers behind GB/s and FLOP/s; ``e`` = bytes per element of the input
dtype, N/M rows, D columns). Bytes are the compulsory traffic: read every input once,
write every output once; the backward reads the output gradient and the inputs and writes
one gradient per input; ``fwd+bwd`` is the sum of the two (nothing is assumed kept in
cache between them). FLOPs are the useful arithmetic of the textbook formula: a dot product
of length D is 2D FLOPs, a transcendental or a division counts 1; the backward counts twice
the forward (the matmul convention: two GEMMs for one), and the O(N), O(NM) element-wise
tails of the pairwise ops are left out of both::

    op                       fwd bytes          bwd bytes                   fwd FLOPs
    pairwise_inner / _dist   e((N+M)D + NM)     e(NM + 2(N+M)D)             2NMD + 2(N+M)D
    dist, oxy_angle          e(2ND + N)         e(N + 4ND)                  6ND   (x.x, y.y, x.y)
    exp_map0, log_map0       e(2ND)             e(3ND)                      3ND   (|v|^2, scale)
    half_aperture            e(ND + N)          e(N + 2ND)                  2ND   (|x|^2)
    contrastive (B, D)       e(2BD)             e(4BD)                      2B^2 D (the logits GEMM)
    entailment (B, D)        e(2BD)             e(4BD)                      8BD   (oxy_angle + aperture)

so the contrastive FLOP/s is the model-FLOP rate (MFU-style: 6B^2D per fwd+bwd, however
many GEMMs the implementation really runs, e.g. a backward that recomputes the logits).

Peak memory (column ``peak_mb``, fwd+bwd pass, one call, after the inputs exist): on CUDA
``torch.cuda.max_memory_allocated()`` minus the allocation before the call (what PyTorch's
allocator handed out, not what the driver reserved). On CPU the resident-set high-water
mark: a fresh worker process per op/loss runs its implementations one after the other, sizes
in increasing order; for each it runs one warm-up call (skipped where one call takes
seconds), frees, ``malloc_trim(0)``, resets the kernel's high-water mark (writes ``5`` to
``/proc/self/clear_refs``) and reports ``VmHWM - VmRSS`` around one call. That counts every
page the call touches (temporaries, outputs, gradients, allocator slack), to within a page
and whatever glibc keeps after the trim; where ``clear_refs`` is not writable the column is
empty. ``--in-process`` (the default for ``--quick``) measures the same way without the
fresh process.

Every implementation is also checked, once per size, against the float64 reference on the
same inputs: ``err`` is ``max |out - ref| / max(1, |ref|)`` of the forward output (not at
the B = 8192 contrastive size on CPU, whose float64 check alone takes a minute; the smaller
size of the same case is checked).

The full CPU suite takes ``torch.compile`` at the smallest size of each case only (compiling
costs tens of seconds per case on two cores); the quick suite leaves it out.
"""
from __future__ import annotations
