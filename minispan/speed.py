"""Speed hooks: the step's forward and backward replayed from CUDA graphs, and compiled encoder layers.
The loop asks forward_backward_hook for its forward and backward; the plain eager one is step.py's.

CUDA graphs.

Run eagerly, a SpanBERT-base step at batch 32 is about 1,000 GPU kernels, each launched by Python and
PyTorch's dispatcher in turn. On an H100/H200 the host cannot keep up: measured on an H200, a step took
27 ms of which the GPU was busy 12. A CUDA graph records a step's kernels once and then relaunches all of
them with a single call: in one run on that card, 15.7 ms a step against 54.0 ms eager (3.4x), the GPU
busy 97% of it, with gradients identical to the eager step's (bench/README.md, tests/test_cuda_graphs.py).

A graph replays the same kernels on the same shapes at the same addresses, so:
- there is one graph per micro-batch shape (rows x width), recorded the first time that shape comes.
  Nearly every batch has the same rows (twice as many shapes when --per-device-batch-size leaves a
  smaller last micro-batch in every step), and batch_width rounds widths up to a multiple of 8, so there
  are at most max_seq_length / 8 widths: 64 for the recipe's 512-token windows;
- each batch is copied into its graph's own input tensors before the replay;
- the gradients live in tensors that are never freed, and the recorded backward adds into them.
All graphs share one memory pool. That is safe because they run one after another on one stream and
nothing but the loss leaves a graph: one graph's scratch memory can be another's, and the pool is as
large as the largest graph needs rather than the sum of them.

Only forward and backward are recorded. Clipping, the fused AdamW update and the schedule stay eager (a
few multi-tensor kernels), so learning-rate changes and checkpoints work as they do without graphs.
Dropout stays random: each replay draws new masks (PyTorch advances the graph's random offset).
"""
import functools
import logging

import torch

from minispan.step import accumulate_gradients

logger = logging.getLogger("minispan")


def forward_backward_hook(model, scaler, rt, cuda_graphs=True):
    """The loop's forward and backward, batches -> summed loss: replayed from CUDA graphs on one GPU in
    bf16 or fp32; eager on the CPU, with --no-cuda-graphs (cuda_graphs False), fp16 (the graphs do not
    handle its loss scaler) and torchrun (nor DistributedDataParallel's all-reduce hooks)."""
    if cuda_graphs and rt.device.type == "cuda" and rt.precision != "fp16" and rt.world_size == 1:
        if rt.rank == 0:
            logger.info("replaying forward and backward from CUDA graphs (one per batch shape; --no-cuda-graphs: off)")
        return GraphedGradients(model, rt.precision)
    return functools.partial(accumulate_gradients, model, scaler=scaler, rt=rt)


def compile_layers(model, backend="inductor"):
    """--compile: torch.compile each encoder layer, in place.

    What it buys: between its matrix products a layer runs a dozen small elementwise operations (bias,
    dropout, residual add, LayerNorm, GELU, autocast's bf16 casts), each a kernel that reads and writes the
    whole activation; the compiler fuses each run of them into one kernel (the products and the attention
    stay cuBLAS's and cuDNN's).
    Why the layers and not the model: the 12 layers run the same code, and their parameters are inputs of
    the compiled graph rather than constants, so one layer is traced and compiled once and all 12 reuse it.
    The whole model would be traced unrolled, about 12 times the work: on an H200 it had not finished after 150 s.
    dynamic=True compiles once with the shapes as symbols for every batch width (by default torch compiles
    for the first shape, then again for each dimension that changes). A batch of a single feature still
    compiles once more (torch treats a dimension of size 1 apart), and so does evaluation (no dropout).
    In place (nn.Module.compile), so state_dict keys keep their names, and on a GPU the CUDA graphs record
    the compiled kernels as they record eager ones.
    """
    for layer in model.bert.encoder.layer:
        layer.compile(dynamic=True, backend=backend)


class GraphedGradients:
    """step.accumulate_gradients for one CUDA GPU and one process, replayed from CUDA graphs.

    Call it with [(batch, weight)] as accumulate_gradients takes them: it adds the micro-batches' weighted
    gradients into the parameters' .grad and returns their summed loss, a tensor on the GPU.
    """

    def __init__(self, model, precision):
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"CUDA graphs: precision {precision!r} not supported (fp16's loss scaler is not)")
        self.model = model
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.grads = [torch.zeros_like(p) for p in self.params]  # the addresses the graphs add into
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs = {}  # micro-batch shape -> (graph, its input tensors, its loss weight, its loss)

    def __call__(self, batches):
        self.model.train()
        # optimizer_step's zero_grad(set_to_none=True) let go of the gradients; this object kept them.
        for p, grad in zip(self.params, self.grads):
            p.grad = grad
        torch._foreach_zero_(self.grads)
        loss_sum = torch.zeros((), device=self.grads[0].device)
        for batch, weight in batches:
            shape = tuple(batch["input_ids"].shape)
            if shape not in self.graphs:
                self.graphs[shape] = self._record(batch)
            graph, inputs, static_weight, loss = self.graphs[shape]
            for name, tensor in batch.items():
                inputs[name].copy_(tensor, non_blocking=True)
            static_weight.fill_(weight)
            graph.replay()
            if weight:
                loss_sum += loss * shape[0]
        return loss_sum

    def _forward_backward(self, inputs, weight):
        # The autocast cache keeps bf16 copies of the weights between uses; a graph must not depend on it.
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype is not None, cache_enabled=False):
            loss = self.model(**inputs).loss
        (loss * weight).backward()
        return loss.detach()

    def _record(self, batch):
        inputs = {name: tensor.clone() for name, tensor in batch.items()}
        weight = torch.zeros((), device=self.grads[0].device)
        # One eager run first, on a side stream as torch's CUDA graph notes ask: on a shape's first run
        # cuBLAS and cuDNN choose kernels and allocate workspaces, which must not happen while recording.
        # Its gradients go to fresh tensors, thrown away, so the gradients accumulated so far are kept.
        for p in self.params:
            p.grad = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._forward_backward(inputs, weight)
        torch.cuda.current_stream().wait_stream(side)
        for p, grad in zip(self.params, self.grads):
            p.grad = grad  # present while recording, so the recorded backward adds into it
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            loss = self._forward_backward(inputs, weight)
        return graph, inputs, weight, loss
