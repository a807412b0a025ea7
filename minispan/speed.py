"""Speed hooks: the step's forward and backward replayed from CUDA graphs, and compiled encoder layers.
The loop asks forward_backward_hook for its forward and backward; the plain eager one is step.py's.

A graph records a step's kernels once and relaunches them all with one call (in one run on an H200: 15.7 ms a step
against 54.0 ms eager, same gradients; bench/README.md). Why and how: docs/05-training.md, "Making the step fast".
"""
import functools
import logging

import torch

from minispan.step import accumulate_gradients

logger = logging.getLogger("minispan")


def forward_backward_hook(model, scaler, rt, cuda_graphs=True):
    """The loop's forward and backward, batches -> summed loss: replayed from CUDA graphs on one GPU in bf16 or fp32;
    eager on the CPU, with --no-cuda-graphs, fp16 (the graphs hold no loss scaler) and torchrun (nor DDP's hooks)."""
    if cuda_graphs and rt.device.type == "cuda" and rt.precision != "fp16" and rt.world_size == 1:  # one process
        logger.info("replaying forward and backward from CUDA graphs (one per batch shape; --no-cuda-graphs: off)")
        return GraphedGradients(model, rt.precision)
    return functools.partial(accumulate_gradients, model, scaler=scaler, rt=rt)


def compile_layers(model, backend="inductor"):
    """--compile: torch.compile each encoder layer in place (the state_dict keeps its names; CUDA graphs record the
    compiled kernels), fusing its small elementwise kernels; the 12 layers share one compile, for all widths."""
    for layer in model.bert.encoder.layer:
        layer.compile(dynamic=True, backend=backend)


class GraphedGradients:
    """step.accumulate_gradients for one CUDA GPU and one process, replayed from CUDA graphs: called with
    [(batch, weight)], it adds the weighted gradients into .grad and returns the summed loss, on the GPU."""

    def __init__(self, model, precision):
        self.model = model
        self.dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]  # not fp16: the graphs hold no loss scaler
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
        # One eager run first, on a side stream as torch's CUDA graph notes ask: on a shape's first run cuBLAS and
        # cuDNN choose kernels and allocate workspaces, which must not happen while recording. Its gradients go to
        # fresh tensors, thrown away, so the gradients accumulated so far are kept.
        self.model.zero_grad(set_to_none=True)
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
