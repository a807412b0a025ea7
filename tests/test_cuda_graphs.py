"""CUDA graphs for the training step (minispan/speed.py), and the batch widths they are recorded for.

The graphs themselves need a CUDA GPU: those tests skip without one (bench/run_gpu.sh runs them on the GPU
machine). Which runs use graphs, and the widths, are checked everywhere.
"""

import pytest
import torch

from minispan.config import BertConfig
from minispan.features import Feature, batch_width
from minispan.files import write_json
from minispan.loop import TrainConfig, TrainingSet, step_batches
from minispan.model import BertForQuestionAnswering
from minispan.predict import predict_logits
from minispan.runtime import Runtime
from minispan.speed import GraphedGradients, compile_layers, forward_backward_hook
from minispan.step import Optimization, accumulate_gradients, linear_warmup_decay, optimizer_step
from minispan.train_cli import parse_args
from test_training import TINY, tiny_batch, tiny_model

CPU = torch.device("cpu")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
# Relative error (of norms) allowed between graphed and eager results. The graph replays the eager kernels,
# but some of them may add in an order that changes from run to run (atomics: the embedding backward,
# attention's backward), and in bf16 a different last bit is rounded again by every later operation.
# Measured on an H200 (torch 2.11): 0 for the gradients in fp32 and bf16, and for the weights after 5 steps.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2}


def test_batch_width_rounds_up_to_a_multiple_of_8_within_max_seq_length():
    assert batch_width([17, 3], 384) == 24
    assert batch_width([24], 384) == 24
    assert batch_width([379], 384) == 384
    assert batch_width([97], 100) == 100  # not past the windows' size
    assert batch_width([120], 100) == 120  # never shorter than the longest feature


def test_step_batches_pad_to_the_batch_width():
    features = [Feature(0, [5] * n, [0] * n, [None] * n, [False] * n, 0, 0) for n in (9, 13, 5)]
    data, cfg = TrainingSet(features, [], 1, pad_token_id=0), TrainConfig(batch_size=3, max_seq_length=384)
    (batch, weight), = step_batches(data, [0, 1, 2], Runtime(CPU), cfg)
    assert batch["input_ids"].shape == (3, 16) and weight == 1.0
    (batch, _), = step_batches(data, [0, 2], Runtime(CPU), TrainConfig(batch_size=3, max_seq_length=14))
    assert batch["input_ids"].shape == (2, 14)  # 13 rounds up to 16, but not past the windows' 14


def test_which_runs_replay_cuda_graphs(monkeypatch):
    """One GPU, bf16 or fp32, no torchrun, not --no-cuda-graphs: graphs (of the compiled layers with
    --compile). Else eager."""
    made = []
    monkeypatch.setattr("minispan.speed.GraphedGradients", lambda model, precision: made.append(precision) or "graphs")
    cuda = torch.device("cuda", 0)

    def graphed(device, precision, world_size, cuda_graphs=True):
        return forward_backward_hook(None, None, Runtime(device, precision, 0, world_size), cuda_graphs) == "graphs"

    assert graphed(cuda, "bf16", 1) and graphed(cuda, "fp32", 1)
    assert made == ["bf16", "fp32"]
    assert not graphed(CPU, "fp32", 1)
    assert not graphed(cuda, "fp16", 1)  # the GradScaler
    assert not graphed(cuda, "bf16", 2)  # DistributedDataParallel
    assert not graphed(cuda, "bf16", 1, cuda_graphs=False)  # --no-cuda-graphs
    assert len(made) == 2


def test_cuda_graphs_flag(tmp_path):
    assert parse_args(["--demo"]).cuda_graphs is True
    assert parse_args(["--demo", "--no-cuda-graphs"]).cuda_graphs is False
    # A run saved before the flag existed resumes with graphs; --resume may turn them off (speed, not results).
    saved = vars(parse_args(["--demo", "--output-dir", str(tmp_path)])).copy()
    del saved["cuda_graphs"]
    write_json(tmp_path / "run_config.json", {"args": saved})
    assert parse_args(["--resume", str(tmp_path)]).cuda_graphs is True
    assert parse_args(["--resume", str(tmp_path), "--no-cuda-graphs"]).cuda_graphs is False


def test_predict_pads_to_the_batch_width():
    """Prediction rounds its widths as training does: fewer shapes for cuDNN to plan (bench/README.md)."""
    model = tiny_model()
    widths = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                    with_kwargs=True)
    features = [Feature(0, [5] * n, [0] * n, [None] * n, [False] * n) for n in (9, 13, 5, 24)]
    start_logits, _ = predict_logits(model, features, CPU, "fp32", batch_size=2)
    assert widths == [24, 16]  # longest first: (24, 13) -> 24; (9, 5) -> 9, rounded up to 16
    assert [len(s) for s in start_logits] == [9, 13, 5, 24]  # each feature's own, unpadded


def on_gpu(micro_batches):
    return [({name: t.cuda() for name, t in batch.items()}, weight) for batch, weight in micro_batches]


# A step's micro-batches: (features, width, seed, weight). Shapes come back in another order than they were
# recorded in, a step mixes a recorded shape with a new one (recorded mid-step, after gradients were added).
STEPS = [[(6, 24, 1, 1.0)],
         [(6, 16, 2, 0.5), (6, 24, 3, 0.5)],
         [(6, 24, 4, 0.5), (3, 8, 5, 0.25)],
         [(3, 8, 6, 1.0)],
         [(6, 16, 7, 1.0)]]


def micro(step):
    return on_gpu([(tiny_batch(n, width, seed), weight) for n, width, seed, weight in step])


@gpu
@pytest.mark.parametrize("precision, compiled", [("fp32", False), ("bf16", False), ("bf16", True)])
def test_graphed_gradients_equal_eager_ones(precision, compiled):
    """Loss and every gradient of GraphedGradients against accumulate_gradients, step by step. `compiled`:
    the graphed model's layers torch.compiled (--compile), so the graphs record and replay inductor's kernels,
    against the plain eager model: this checks the compiled layers too (on the CPU, inductor's kernels against
    eager: 1.4e-4 in bf16, 1.7e-6 in fp32, by this measure)."""
    eager, graphed = tiny_model().cuda(), tiny_model().cuda()
    if compiled:
        torch._dynamo.reset()
        compile_layers(graphed)
    graphs = GraphedGradients(graphed, precision)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    tolerance = TOLERANCE[precision]
    worst = 0.0
    for i, step in enumerate(STEPS):
        eager.zero_grad(set_to_none=True)
        expected = accumulate_gradients(eager, micro(step), scaler, Runtime(torch.device("cuda"), precision))
        got = graphs(micro(step))
        assert abs(got.item() - expected.item()) <= tolerance * abs(expected.item()), (i, got, expected)
        total = torch.cat([p.grad.flatten() for p in eager.parameters()]).norm().item()
        for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
            # A floor for the few gradients that are 0 but for rounding (e.g. qa_outputs.bias: the softmax
            # does not change when every logit moves by the same amount).
            error = (q.grad - p.grad).norm().item() / max(p.grad.norm().item(), 1e-2 * total)
            assert error <= tolerance, (i, name, error)
            worst = max(worst, error)
    assert len(graphs.graphs) == 3  # one graph per shape
    print(f"{precision}: largest relative gradient difference {worst:.1e}")


@gpu
def test_graphed_training_steps_equal_eager_ones():
    """Five full train_steps (clipping, update, schedule, zero_grad), fp32: the same losses and weights.
    Plain SGD, not AdamW: Adam's first steps move every weight by about lr whatever the size of its gradient,
    so gradients that differ by rounding near 0 (the atomics above) would become differences of 2 * lr."""
    cuda = torch.device("cuda")
    runs = {}
    for use_graphs in (False, True):
        model = tiny_model().cuda()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = linear_warmup_decay(optimizer, 2, 10)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        forward_backward = forward_backward_hook(model, scaler, Runtime(cuda, "fp32"), use_graphs)
        assert isinstance(forward_backward, GraphedGradients) == use_graphs
        opt = Optimization(optimizer, scheduler, scaler, 1.0)
        losses = []
        for step in STEPS:  # the loop's step: forward and backward, then the update
            losses.append(forward_backward(micro(step)))
            optimizer_step(model, opt)
        runs[use_graphs] = model, torch.stack(losses)
    (eager, eager_losses), (graphed, graphed_losses) = runs[False], runs[True]
    torch.testing.assert_close(graphed_losses, eager_losses, rtol=1e-5, atol=0)
    worst = max((q - p).abs().max().item() for p, q in zip(eager.parameters(), graphed.parameters()))
    print(f"largest weight difference after {len(STEPS)} steps: {worst:.2e}")
    assert worst < 1e-5


@gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_each_replay_draws_new_dropout(compiled):
    """Also with --compile, whose dropout is inductor's own random numbers, seeded inside the graph."""
    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**dict(TINY, hidden_dropout_prob=0.1,
                                                       attention_probs_dropout_prob=0.1))).cuda()
    if compiled:
        torch._dynamo.reset()
        compile_layers(model)
    graphs = GraphedGradients(model, "bf16")
    batch = micro([(6, 24, 1, 1.0)])
    losses = torch.stack([graphs(batch) for _ in range(3)]).tolist()
    assert len(set(losses)) == 3, losses
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
