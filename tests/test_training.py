"""The training loop's pieces: optimizer step vs transformers, accumulation, sharding, schedule, checkpoints."""
import collections
import errno
import io
import os
import pickle
import random
import shutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minispan.config import BertConfig
from minispan.features import Feature
from minispan.model import BertForQuestionAnswering
from minispan.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, truncate_log
from minispan.loop import Progress, batch_plan, training_batch
from minispan.predict import predict_logits
from minispan.runtime import Runtime, TrainingError, main_process_first, resolve_device, resolve_precision
from minispan.speed import compile_layers
from minispan.step import (Optimization, accumulate_gradients, linear_warmup_decay, make_optimizer, micro_batches,
                           optimizer_step, param_groups, set_dropout)
from minispan.weights import load_model, save_model

CPU = torch.device("cpu")
RT = Runtime(CPU)
TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return BertForQuestionAnswering(BertConfig(**TINY))


def tiny_batch(n=6, length=24, seed=1):
    """A padded training batch: rows of different lengths, targets inside each row (some at [CLS])."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, length + 1, (n,), generator=g)
    lengths[0] = length
    input_ids = torch.randint(5, TINY["vocab_size"], (n, length), generator=g)
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * attention_mask  # [PAD] = 0
    token_type_ids = (torch.arange(length)[None, :] >= 4).long() * attention_mask
    start = torch.stack([torch.randint(0, int(k), (), generator=g) for k in lengths])
    end = torch.minimum(start + torch.randint(0, 3, (n,), generator=g), lengths - 1)
    start[1] = end[1] = 0  # an unanswerable one
    return dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                start_positions=start, end_positions=end)


def rows(batch, index):
    return {name: t[index] for name, t in batch.items()}


def no_scaler():
    return torch.amp.GradScaler("cpu", enabled=False)


def train_step(model, batches, opt, rt=RT):
    """The loop's step (loop.train_loop): forward and backward over the micro-batches, then the update."""
    loss_sum = accumulate_gradients(model, batches, opt.scaler, rt)
    return loss_sum, optimizer_step(model, opt)


def test_optimizer_steps_match_transformers(tmp_path):
    """Five steps against transformers' BertForQuestionAnswering + torch AdamW with the usual name-based
    decay groups + get_linear_schedule_with_warmup: loss, every gradient, gradient norm, learning rate and
    every parameter after each step.

    Before each step the oracle takes our gradients (after checking them against its own): a few
    parameters have a true gradient of exactly 0 (qa_outputs.bias: the softmax's gradient sums to 0 over
    the positions), so their gradients are float rounding noise, which Adam divides by its own size into
    updates of ~lr. Without the copy the largest parameter difference is 4e-5 to 1.6e-4 (steps 1-4), on
    qa_outputs.bias only; with it the parameters agree to 3.7e-9, float rounding: our fused AdamW kernel
    orders its arithmetic differently from the oracle's loop (unfused, the two were bit-identical).
    """
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
    ours = tiny_model()
    save_model(ours, tmp_path)
    theirs = transformers.BertForQuestionAnswering.from_pretrained(tmp_path, attn_implementation="eager")
    names = dict(theirs.named_parameters())

    # transformers' recipe groups by name: no decay for biases and LayerNorm weights; we go by shape.
    no_decay = {n for n in names if n.endswith("bias") or "LayerNorm.weight" in n}
    ours_names = {id(p): n for n, p in ours.named_parameters()}
    assert {ours_names[id(p)] for p in param_groups(ours, 0.01)[1]["params"]} == no_decay
    optimizer = make_optimizer(ours, lr=1e-3, weight_decay=0.01, device=CPU)
    scheduler = linear_warmup_decay(optimizer, warmup_steps=2, total_steps=5)
    their_optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in names.items() if n not in no_decay], "weight_decay": 0.01},
         {"params": [p for n, p in names.items() if n in no_decay], "weight_decay": 0.0}], lr=1e-3)
    their_scheduler = transformers.get_linear_schedule_with_warmup(their_optimizer, 2, 5)

    ours_params = dict(ours.named_parameters())
    for step in range(5):
        batch = tiny_batch(seed=step)
        loss_sum = accumulate_gradients(ours, [(batch, 1.0)], no_scaler(), RT)
        theirs.train()
        loss = theirs(**batch).loss
        loss.backward()
        assert abs(loss_sum.item() / 6 - loss.item()) < 1e-5  # measured <= 6.4e-7
        worst_grad = max((ours_params[n].grad - p.grad).abs().max().item() for n, p in names.items())
        assert worst_grad < 1e-5  # measured <= 1.5e-7
        for n, p in names.items():
            p.grad = ours_params[n].grad.clone()

        grad_norm = optimizer_step(ours, Optimization(optimizer, scheduler, no_scaler(), max_grad_norm=1.0))
        their_norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        their_optimizer.step()
        their_scheduler.step()
        their_optimizer.zero_grad()

        assert grad_norm.item() > 1.0  # so the clipping was exercised
        assert abs(grad_norm.item() - their_norm.item()) < 1e-5  # measured 0
        assert scheduler.get_last_lr() == their_scheduler.get_last_lr()
        worst = max((ours_params[n] - p).abs().max().item() for n, p in names.items())
        assert worst < 1e-5, (step, worst)  # measured 0 after step 1, 3.7e-9 after steps 2-5 (fused kernel)


class HostReads(TorchDispatchMode):
    """Counts the operations whose result the host must wait for: .item() / float() / `if tensor`
    (_local_scalar_dense), torch.equal, and those whose output size depends on the data (nonzero,
    masked_select, unique). Blind spots: on CPU tensors .tolist(), .cpu() and .numpy() dispatch nothing."""

    READS = {"_local_scalar_dense", "equal", "nonzero", "masked_select", "_unique2", "unique_dim",
             "unique_consecutive"}

    def __init__(self):
        super().__init__()
        self.reads, self.ops = collections.Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func.overloadpacket.__name__ in self.READS:
            self.reads[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_training_step_never_waits_for_the_device(precision):
    """On a GPU, reading a value back makes the CPU wait until everything queued has run, so it cannot
    prepare the next step meanwhile. The same operations are visible on the CPU, so we count them here:
    two steps of fit()'s loop body (train_step, with clipping, AdamW, the schedule and for fp16 the
    GradScaler, then the running sums) must dispatch none. Measured: 0 reads.

    On the CPU every tensor is a host tensor, so this is stricter than a GPU needs: the unfused AdamW
    reads its step counts (39 reads per step for this model), which it keeps on the host, so on a GPU
    machine they cost no wait; but in fp16 it also reads the GradScaler's overflow flag, a device value
    (the 40th read per step), which does."""
    model = tiny_model()
    optimizer = make_optimizer(model, 1e-3, 0.01, CPU)
    scheduler = linear_warmup_decay(optimizer, 2, 10)
    scaler = torch.amp.GradScaler("cpu", enabled=precision == "fp16")
    batch = tiny_batch()
    loss_sum, nonfinite = torch.zeros(()), torch.zeros(())
    with HostReads() as mode:
        for _ in range(2):
            loss, grad_norm = train_step(model, [(batch, 1.0)], Optimization(optimizer, scheduler, scaler, 1.0),
                                         Runtime(CPU, precision))
            loss_sum += loss
            nonfinite += (~torch.isfinite(grad_norm)).float()
    assert mode.ops > 100  # the mode saw the step
    assert not mode.reads, dict(mode.reads)
    assert loss_sum.item() > 0 and nonfinite.item() == 0


def test_compile_traces_one_layer_once_for_every_layer_and_batch_width():
    """train.py --compile: length-grouped batches change width every step, and the last one is smaller.
    compile_layers must trace one layer once for all the layers and all the widths, in one graph (no graph
    breaks), computing what the model computes. A recording backend stands in for inductor (the next test
    runs inductor itself); tracing, graph breaks and shape guards are dynamo's either way. Measured: 1 graph
    (torch.compile's default, dynamic=None, traces 3: the first shape, then with a symbolic width, then
    with a symbolic batch size too for the smaller batch)."""
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    model, compiled = tiny_model(), tiny_model()
    compile_layers(compiled, backend=record)
    assert list(compiled.state_dict()) == list(model.state_dict())  # compiled in place: the same names
    for n, length in [(6, 24), (6, 17), (6, 30), (3, 11)]:
        batch = tiny_batch(n, length, seed=length)
        torch.testing.assert_close(compiled(**batch).loss, model(**batch).loss, rtol=0, atol=1e-6)
    assert len(graphs) == 1


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile's inductor needs a C++ compiler on the CPU")
def test_compiled_layers_give_the_eager_loss_and_gradients():
    """Inductor's fused kernels (here its C++ ones; on a GPU, Triton's) against the eager layers, fp32, no
    dropout, two widths. Measured (torch 2.13, CPU): the same loss, every gradient within 9e-8 (sums in
    another order). About 20 s on 2 cores, nearly all of it compiling."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model, compiled = tiny_model(), tiny_model()
    compile_layers(compiled)
    for n, length in [(6, 24), (6, 17)]:
        batch = tiny_batch(n, length, seed=length)
        expected, got = model(**batch).loss, compiled(**batch).loss
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
        expected.backward(), got.backward()
        for (name, p), q in zip(model.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
        model.zero_grad(), compiled.zero_grad()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # compiled code ran, compiled once


def test_predict_returns_each_features_own_logits_in_order():
    """predict_logits sorts features by length into padded batches and keeps the logits on the device until the
    end: every feature must get back exactly the logits of running it alone, unpadded, in its own place.
    Measured max |diff| 1.5e-8 (padding changes the summation order only)."""
    model = tiny_model().eval()
    g = torch.Generator().manual_seed(3)
    features = []
    for n in [7, 23, 12, 7, 30, 18, 9]:
        ids = torch.randint(5, TINY["vocab_size"], (n,), generator=g).tolist()
        features.append(Feature(example_index=len(features), input_ids=ids, token_type_ids=[0] * 3 + [1] * (n - 3),
                                offsets=[None] * n, token_is_max_context=[True] * n))
    start_logits, end_logits = predict_logits(model, features, CPU, "fp32", batch_size=3)
    for f, start, end in zip(features, start_logits, end_logits):
        with torch.no_grad():
            alone = model(torch.tensor([f.input_ids]), torch.tensor([f.token_type_ids]))
        assert start.shape == end.shape == (len(f.input_ids),)
        torch.testing.assert_close(torch.from_numpy(start), alone.start_logits[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(end), alone.end_logits[0], rtol=0, atol=1e-5)


def test_truncate_log_keeps_the_steps_a_resume_does_not_redo(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 4}\n{"step": 8}\n{"step": 12}\n{"step": 1')  # the last line cut by a kill
    truncate_log(log, 9)
    assert log.read_text() == '{"step": 4}\n{"step": 8}\n'
    truncate_log(log, 0)  # a resume that found no checkpoint starts over
    assert log.read_text() == ""
    truncate_log(tmp_path / "absent.jsonl", 5)  # killed before its first log line: nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_main_process_first_fetches_once_per_process():
    """squad_file and model_dir: ensure_squad / ensure_spanbert validate by reading the whole file, so each
    process calls them once (rank 0 used to call them twice, parsing train-v2.0.json an extra time)."""
    calls = []
    for is_main in (True, False):
        assert main_process_first(lambda: calls.append(is_main) or "path", is_main, world_size=1) == "path"
    assert calls == [True, False]


def test_schedule_is_linear_warmup_then_decay():
    transformers = pytest.importorskip("transformers", reason="transformers is the test oracle")
    p = torch.nn.Parameter(torch.zeros(1))
    ours = linear_warmup_decay(torch.optim.AdamW([p], lr=2e-5), warmup_steps=3, total_steps=10)
    oracle_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
    theirs = transformers.get_linear_schedule_with_warmup(oracle_optimizer, 3, 10)
    lrs, expected = [], []
    for _ in range(12):
        lrs.append(ours.get_last_lr()[0])
        expected.append(theirs.get_last_lr()[0])
        ours.optimizer.step(), ours.step(), oracle_optimizer.step(), theirs.step()
    assert lrs == expected
    assert lrs[:4] == pytest.approx([0.0, 2e-5 / 3, 2 * 2e-5 / 3, 2e-5]) and lrs[10:] == [0.0, 0.0]


def test_batch_plan_reshuffles_every_epoch_and_covers_every_feature_once():
    rng = random.Random(1)
    lengths = [rng.randint(20, 384) for _ in range(100)]
    plan = batch_plan(lengths, 8, epochs=3, seed=42)
    assert len(plan) == 3 * 13  # ceil(100 / 8) steps an epoch
    epochs = [plan[13 * k : 13 * (k + 1)] for k in range(3)]
    for epoch in epochs:
        assert sorted(i for batch in epoch for i in batch) == list(range(100))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]  # a new order every epoch, not the same one again
    assert batch_plan(lengths, 8, epochs=3, seed=42) == plan  # what a resumed run recomputes
    assert batch_plan(lengths, 8, epochs=1, seed=43) == epochs[1]  # epoch k is seed + k's shuffle


def test_micro_batches_shard_a_global_batch():
    batch = list(range(7))
    # 2 processes, micro-batches of 2: process 0 takes 0, 2, 4, 6; process 1 takes 1, 3, 5.
    assert micro_batches(batch, 0, 2, 2) == [([0, 2], 4 / 7), ([4, 6], 4 / 7)]
    assert micro_batches(batch, 1, 2, 2) == [([1, 3], 4 / 7), ([5], 2 / 7)]
    # Every feature of the global batch is run once, by one process, and counts 1/7 in the gradient: its
    # micro-batch's mean loss is weighted w = n * P / 7, and DDP divides the sum over processes by P.
    for world in (1, 2, 3, 4, 7, 9):
        for per_device in (1, 2, 3):
            shares = [share for r in range(world) for share in micro_batches(batch, r, world, per_device)]
            assert sorted(i for ix, w in shares if w for i in ix) == batch
            assert all(w / (len(ix) * world) == pytest.approx(1 / 7) for ix, w in shares if w)
    # A process left with nothing still runs a batch, weighted 0, so it joins the all-reduce.
    assert micro_batches([0], 1, 2, 2) == [([0], 0.0)]


@pytest.mark.parametrize("per_device, sizes", [(2, [2, 2, 2]), (4, [4, 2])])
def test_accumulated_micro_batches_equal_one_batch(per_device, sizes):
    """Gradient accumulation: 3 micro-batches of 2 (weights 2/6), or uneven ones of 4 and 2 (weights 4/6 and
    2/6), give the gradient of one batch of 6, when
    every micro-batch is padded to the global batch's width (see training_batch). (Gradients, not updated
    weights: Adam's first step is lr * sign(gradient), and qa_outputs.bias's true gradient is 0, so its
    rounding noise decides the sign.)"""
    whole, split = tiny_model(), tiny_model()
    batch = tiny_batch()
    losses = [accumulate_gradients(model, [(rows(batch, torch.tensor(ix)), w) for ix, w in parts],
                                   no_scaler(), RT)
              for model, parts in ((whole, [(list(range(6)), 1.0)]),
                                   (split, micro_batches(list(range(6)), 0, 1, per_device)))]
    assert [len(ix) for ix, _ in micro_batches(list(range(6)), 0, 1, per_device)] == sizes
    assert abs(losses[0].item() - losses[1].item()) < 1e-5  # measured 0
    worst = max((a.grad - b.grad).abs().max().item() for a, b in zip(whole.parameters(), split.parameters()))
    assert worst < 1e-6  # measured 1.5e-7: the same gradient up to float summation order


def test_training_batch_pads_to_the_global_width():
    """Padding enters the span loss (its softmax covers every position), hence the common width."""
    from minispan.features import Feature

    features = [Feature(0, [2, 7, 3, 8, 9, 3], [0, 0, 0, 1, 1, 1], [None] * 6, [False] * 6, 3, 4),
                Feature(1, [2, 7, 3, 8, 3], [0, 0, 0, 1, 1], [None] * 5, [False] * 5, 0, 0)]
    batch = training_batch(features[1:], 8, pad_token_id=0, device=CPU)
    assert batch["input_ids"].tolist() == [[2, 7, 3, 8, 3, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 0, 0, 0]]
    assert batch["start_positions"].tolist() == [0]
    model = tiny_model()
    narrow = model(**training_batch(features[1:], 5, 0, CPU)).loss
    assert abs(model(**batch).loss.item() - narrow.item()) > 1e-3  # why the width must not vary


def test_device_and_precision_resolution():
    assert resolve_device("cpu") == CPU
    assert resolve_precision(None, CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(TrainingError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", CPU)
    with pytest.raises(TrainingError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == CPU
        with pytest.raises(TrainingError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_checkpoint_round_trip(tmp_path):
    """save_checkpoint + load_model/load_trainer_state restore the model, AdamW, schedule and RNG exactly
    (read back with torch.load(weights_only=True)); unfinished temporary directories are never picked."""
    model = tiny_model()
    optimizer = make_optimizer(model, 1e-3, 0.01, CPU)
    scheduler = linear_warmup_decay(optimizer, 2, 10)
    for step in range(3):
        train_step(model, [(tiny_batch(seed=step), 1.0)], Optimization(optimizer, scheduler, no_scaler()))
    (tmp_path / "checkpoints" / ".step-9.abc").mkdir(parents=True)  # a crash mid-save leaves such a thing
    save_checkpoint(tmp_path, model, Optimization(optimizer, scheduler, no_scaler()), RT, Progress.start(CPU, step=2))
    save_checkpoint(tmp_path, model, Optimization(optimizer, scheduler, no_scaler()), RT, Progress.start(CPU, step=3))
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-3"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-3"]  # older ones removed
    expected_rng = torch.get_rng_state()
    torch.manual_seed(123)

    restored = load_model(tmp_path / "checkpoints" / "step-3")
    restored_optimizer = make_optimizer(restored, 1e-3, 0.01, CPU)
    restored_scheduler = linear_warmup_decay(restored_optimizer, 2, 10)
    step, sums = load_trainer_state(tmp_path / "checkpoints" / "step-3",
                                    Optimization(restored_optimizer, restored_scheduler, no_scaler()), RT)
    assert step == 3 and torch.equal(torch.get_rng_state(), expected_rng) and torch.equal(sums, torch.zeros(3))
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()
    # The next step is identical, bit for bit.
    for m, o, s in ((model, optimizer, scheduler), (restored, restored_optimizer, restored_scheduler)):
        train_step(m, [(tiny_batch(seed=9), 1.0)], Optimization(o, s, no_scaler()))
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


def test_dropout_override():
    model = BertForQuestionAnswering(BertConfig(**{**TINY, "hidden_dropout_prob": 0.1,
                                                   "attention_probs_dropout_prob": 0.1}))
    batch = tiny_batch()
    model.train()
    torch.manual_seed(0)
    a = model(**batch).start_logits
    torch.manual_seed(1)
    assert not torch.equal(a, model(**batch).start_logits)  # dropout on: two draws differ
    set_dropout(model, 0.0)
    b = model(**batch).start_logits
    model.eval()
    assert torch.equal(b, model(**batch).start_logits)  # dropout 0 in training = eval mode


def saved_run(tmp_path, step=3):
    """A tiny model trained `step` steps and checkpointed, with running sums of (1.5, 6, 1) since its last
    log line; returns the Optimization that saved it."""
    model = tiny_model()
    opt = fresh_optimization(model)
    for i in range(step):
        train_step(model, [(tiny_batch(seed=i), 1.0)], opt)
    save_checkpoint(tmp_path, model, opt, RT, Progress.start(CPU, step, torch.tensor([1.5, 6.0, 1.0])))
    return model, opt


def fresh_optimization(model):
    optimizer = make_optimizer(model, 1e-3, 0.01, CPU)
    return Optimization(optimizer, linear_warmup_decay(optimizer, 2, 10), no_scaler())


def test_running_sums_are_resumed_for_any_process_count(tmp_path):
    """The loss and feature counts since the last log line come back (a resumed run's next log line is the
    uninterrupted run's): each process its own, or with another process count the total on rank 0.
    Checkpoints from before the sums were saved resume with sums of 0."""
    model, _ = saved_run(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "step-3"
    step, sums = load_trainer_state(checkpoint, fresh_optimization(model), RT)
    assert step == 3 and sums.tolist() == [1.5, 6.0, 1.0]
    progress = Progress.start(CPU, step, sums)
    assert (progress.step, progress.loss_sum.item(), progress.seen.item(), progress.nonfinite.item()) == (3, 1.5, 6, 1)

    state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)  # as two processes would save it
    two = [torch.tensor([1.5, 6.0, 1.0]), torch.tensor([0.5, 5.0, 0.0])]
    torch.save({**state, "rng": state["rng"] * 2, "sums": two}, checkpoint / "trainer_state.pt")
    for rt, expected in ((RT, [2.0, 11.0, 1.0]), (Runtime(CPU, rank=0, world_size=3), [2.0, 11.0, 1.0]),
                         (Runtime(CPU, rank=1, world_size=3), [0.0, 0.0, 0.0])):
        assert load_trainer_state(checkpoint, fresh_optimization(model), rt)[1].tolist() == expected
    del state["sums"]
    torch.save(state, checkpoint / "trainer_state.pt")
    assert load_trainer_state(checkpoint, fresh_optimization(model), RT)[1].tolist() == [0.0, 0.0, 0.0]


def test_a_corrupt_trainer_state_is_one_line_naming_it(tmp_path):
    """--resume reads trainer_state.pt from disk: cut short, empty, a refused pickle, keys missing, values of
    the wrong type or shape, a random state that is not one: a ValueError naming the file and the problem,
    never torch's advice to load with weights_only=False; nothing is restored from a refused file."""
    model, _ = saved_run(tmp_path)
    path = tmp_path / "checkpoints" / "step-3" / "trainer_state.pt"
    good, state = path.read_bytes(), torch.load(path, weights_only=True)
    bad_rng = state["rng"][0]["cpu"].clone()
    bad_rng[:] = 0  # the right size, but no Mersenne Twister state
    moments = state["optimizer"]["state"][0]
    cases = [
        (b"", "not a readable PyTorch checkpoint"),
        (good[:len(good) // 2], "not a readable PyTorch checkpoint"),
        (pickle.dumps(collections.OrderedDict(a=shutil.rmtree), protocol=2), "refused: not a plain tensor checkpoint"),
        ({k: v for k, v in state.items() if k != "scheduler"}, "expected a dict with step, optimizer, scheduler"),
        ([1, 2], "got list"),
        ({**state, "step": "3"}, "step is str, expected int"),
        ({**state, "scheduler": {**state["scheduler"], "last_epoch": 3.0}}, r"scheduler\['last_epoch'\] is float"),
        ({**state, "scheduler": {k: v for k, v in state["scheduler"].items() if k != "lr_lambdas"}},
         "scheduler lacks 'lr_lambdas'"),
        ({**state, "optimizer": {**state["optimizer"], "param_groups": state["optimizer"]["param_groups"][:1]}},
         r"optimizer\['param_groups'\] has 1 entries, expected 2"),
        ({**state, "optimizer": {**state["optimizer"], "state": {0: {**moments, "exp_avg": torch.zeros(3)}}}},
         r"optimizer\['state'\]\[0\] does not fit the model's parameters"),
        ({**state, "rng": [{"cpu": bad_rng}]}, "rng: Invalid mt19937 state"),
        ({**state, "rng": [{"cpu": bad_rng[:10]}]}, r"rng\[0\]\['cpu'\] is torch.uint8 \(10,\), expected torch.uint8"),
        ({**state, "sums": [torch.zeros(3, dtype=torch.int64)]}, r"sums\[0\] is torch.int64"),
    ]
    rng = torch.get_rng_state()
    for content, message in cases:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        opt = fresh_optimization(model)
        with pytest.raises(ValueError, match=rf"^{path}: .*{message}") as raised:
            load_trainer_state(path.parent, opt, RT)
        assert "weights_only" not in str(raised.value) and "\n" not in str(raised.value)
        assert opt.scheduler.last_epoch == 0 and torch.equal(torch.get_rng_state(), rng)


def full_disk(free):
    """open() whose raw writes fail with ENOSPC once `free` bytes are written in all, as on a full disk (the
    buffered layer above is Python's own, so the failure surfaces where a real one would)."""
    left = [free]

    class Raw(io.FileIO):
        def write(self, data):
            if len(data) > left[0]:
                left[0] = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            left[0] -= len(data)
            return super().write(data)

    def open_(file, mode="r", encoding=None):
        if "w" not in mode:
            return open(file, mode, encoding=encoding)
        buffered = io.BufferedWriter(Raw(file, "w"))
        return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding=encoding)

    return open_


@pytest.mark.parametrize("where", ["model.safetensors", "trainer_state.pt"])
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, where):
    """The disk fills up while writing the model or while torch.save writes the trainer state (where torch
    turns the failed write into 'RuntimeError: [enforce fail at inline_container.cc:672]'): an OSError naming
    the checkpoint, not its hidden temporary folder; the previous checkpoint intact, and resumable."""
    import minispan.files

    model, opt = saved_run(tmp_path, step=2)
    model_bytes = (tmp_path / "checkpoints" / "step-2" / "model.safetensors").stat().st_size
    monkeypatch.setattr(minispan.files, "open", full_disk(100 if where == "model.safetensors" else model_bytes + 2000),
                        raising=False)
    with pytest.raises(OSError) as raised:
        save_checkpoint(tmp_path, model, opt, RT, Progress.start(CPU, step=3))
    monkeypatch.undo()  # space freed
    assert str(raised.value) == (f"[Errno 28] {tmp_path / 'checkpoints' / 'step-3'}: cannot write: No space left on "
                                 "device (any earlier checkpoint is kept)")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]
    assert load_trainer_state(tmp_path / "checkpoints" / "step-2", fresh_optimization(load_model(
        tmp_path / "checkpoints" / "step-2")), RT)[0] == 2
