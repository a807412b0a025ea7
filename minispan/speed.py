"""Speed hooks: the step's forward and backward replayed from CUDA graphs, and compiled encoder layers.
The loop asks forward_backward_hook for its forward and backward; the plain eager one is step.py's.

CUDA graphs. Run eagerly, a SpanBERT-base step at batch 32 launches about 1,000 GPU kernels one by one
from Python, and a fast GPU waits for the host (in one run on an H200, the GPU was busy 12 ms of a 27 ms
step). A graph records the kernels once and relaunches them all with one call: measured in another run on
that card, 15.7 ms a step against 54.0 ms eager, with the same gradients (bench/README.md).
A graph replays the same kernels on the same shapes at the same addresses, so:
- there is one graph per micro-batch shape (rows x width), recorded when the shape first comes; widths are
  rounded up to a multiple of 8 (features.batch_width): at most 64 widths for 512-token windows;
- each batch is copied into its graph's own input tensors before the replay;
- the gradients live in tensors that are never freed, and the recorded backward adds into them.
All graphs share one memory pool: they run one after another on one stream and nothing but the loss
leaves a graph. Clipping, AdamW and the schedule stay eager (a few multi-tensor kernels). Dropout stays
random: each replay draws new masks.
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
    """--compile: torch.compile each encoder layer, in place, fusing each run of its small elementwise
    kernels (bias, dropout, residual add, LayerNorm, GELU, casts) into one. The 12 layers run the same code
    with their parameters as inputs, so one compile serves all of them (the whole model, unrolled, had not
    compiled after 150 s on an H200); dynamic=True: one compile for every batch width. In place, so the
    state_dict keeps its names and the CUDA graphs record the compiled kernels."""
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
