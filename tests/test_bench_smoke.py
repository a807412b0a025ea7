"""The GPU benchmarks, kept from rotting: their FLOP count against torch's counter, their choice of timed
steps, their profile summary, and both scripts end to end in their --tiny CPU mode (2 layers, hidden 32, a
few steps); and bench/step_overhead.py's operation counts at 2 layers."""
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from minispan.model import BertForQuestionAnswering

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
spec = importlib.util.spec_from_file_location("gpu_train", REPO / "bench" / "gpu_train.py")
gpu_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_train)


def counted_flops(model, lengths):
    """Forward + backward FLOPs of one unpadded sequence per length, as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        for s in lengths:
            ids = torch.randint(1, model.config.vocab_size, (1, s))
            out = model(input_ids=ids, start_positions=torch.tensor([1]), end_positions=torch.tensor([s - 1]))
            out.loss.backward()
    return counter.get_total_flops()


def test_flop_count_matches_torch_flop_counter():
    lengths = [5, 17, 40, 96]
    model = BertForQuestionAnswering(gpu_train.TINY)
    with sdpa_kernel(SDPBackend.MATH):  # attention as plain matrix products, which the counter sees
        ours = counted_flops(model, lengths)
    # measured: equal to the FLOP (the formula counts exactly the matrix products the counter counts)
    assert gpu_train.train_flops(gpu_train.TINY, lengths) == ours


def test_flop_count_matches_transformers_model():
    transformers = pytest.importorskip("transformers", reason="transformers is the oracle")
    import dataclasses

    config = transformers.BertConfig(**dataclasses.asdict(gpu_train.TINY))
    config._attn_implementation = "eager"  # its attention as explicit matrix products
    lengths = [7, 64]
    # measured: equal; transformers' model does the same work as minispan's
    assert gpu_train.train_flops(gpu_train.TINY, lengths) == counted_flops(
        transformers.BertForQuestionAnswering(config), lengths)


def test_timed_steps_are_a_representative_sample_of_the_epoch():
    rng = random.Random(0)
    lengths = [min(384, int(rng.lognormvariate(5.1, 0.35))) for _ in range(6000)]  # about SQuAD's shape
    args = gpu_train.parse_args(["--data", str(REPO / "data" / "sample.json")])
    warmup, timed = gpu_train.timed_plan(lengths, args)
    plan = [b for b in gpu_train.batch_indices(lengths, 32, shuffle=True, seed=args.seed) if len(b) == 32]
    width = lambda batch: max(lengths[i] for i in batch)  # noqa: E731
    assert len(timed) == 30 and all(len(b) == 32 for b in timed) and len(warmup) == 40
    assert width(warmup[0]) == max(map(width, plan))  # the memory high-water mark is reached in warm-up
    assert all(batch in warmup for batch in timed)  # no shape is new when timed
    # Cost ~ padded tokens: the sample's mean width is the epoch's (measured: 0.3% apart; random picks: ~3%).
    epoch, sample = statistics.mean(map(width, plan)), statistics.mean(map(width, timed))
    assert abs(sample - epoch) / epoch < 0.01


def test_profile_summary_counts_each_kernel_once():
    """The CUDA side of summarize_profile, which only a GPU produces, on made-up profiler events: a named
    range (record_function) also appears on the GPU, spanning the kernels inside it; it must not count."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(key, device, count=1, us=0.0, annotation=False):
        return SimpleNamespace(key=key, device_type=device, count=count, self_device_time_total=us,
                               self_cpu_time_total=0.0, is_user_annotation=annotation)

    events = [event("aten::mm", DeviceType.CPU, count=2), event("Optimizer.step#AdamW.step", DeviceType.CPU),
              event("sm90_xmma_gemm_bf16", DeviceType.CUDA, count=2, us=100.0),
              event("fmha_cutlassF_bf16_aligned_64x64", DeviceType.CUDA, us=50.0),
              event("Optimizer.step#AdamW.step", DeviceType.CUDA, us=500.0),  # spans the AdamW kernels
              event("## forward ##", DeviceType.CUDA, us=900.0, annotation=True)]
    summary = gpu_train.summarize_profile(events, cuda=True)
    assert summary["kernels"] == 3 and summary["busy_ms"] == 0.15
    assert summary["attention_kernels"] == ["fmha_cutlassF_bf16_aligned_64x64"]
    assert summary["classes"] == {"matrix products": {"kernels": 2, "ms": 0.1}, "attention": {"kernels": 1, "ms": 0.05}}
    assert [k["kernel"] for k in summary["longest"]] == ["sm90_xmma_gemm_bf16", "fmha_cutlassF_bf16_aligned_64x64"]


def test_kernel_classes():
    """Kernel names as an H200's profile shows them (torch 2.11), and inductor's."""
    names = {"cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64": "attention",
             "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_TNN": "matrix products",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64": "matrix products",
             "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>": "layer norm",
             "void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel<float, float>": "layer norm",
             "void at::native::multi_tensor_apply_kernel<at::native::FusedAdamMathFunctor<float, 4>>": "optimizer, foreach",
             "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>": "elementwise",
             "void at::native::fused_dropout_kernel_vec<c10::BFloat16, float, unsigned int, 1, 4, bool>": "elementwise",
             "triton_per_fused__to_copy_add_native_dropout_native_layer_norm_3": "compiled (triton)",
             "Memcpy HtoD (Pinned -> Device)": "memory copies",
             "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>": "other"}
    assert {name: gpu_train.kernel_class(name) for name in names} == names


def run_script(*args):
    result = subprocess.run([sys.executable, *map(str, args)], env=ENV, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_gpu_train_tiny(tmp_path):
    pytest.importorskip("transformers", reason="transformers is the peer of configurations (b) and (c)")
    out = run_script(REPO / "bench" / "gpu_train.py", "--tiny", "--json", tmp_path / "r.json")
    results = json.loads((tmp_path / "r.json").read_text())
    runs = results["configs"]
    assert list(runs) == ["a", "b", "c"]
    for run in runs.values():
        assert run["steps"] == 3 and run["features_per_s"] > 0 and run["nonfinite_steps"] == 0
        assert 0 < run["mean_loss"] < 10  # a random span head: about log(sequence length)
        # the profiled median step: on the CPU, aten operations stand in for kernels
        assert run["profile"]["kernels"] > 100 and 0 < run["profile"]["busy_ms"]
        assert any("scaled_dot_product" in name for name in run["profile"]["attention_kernels"])
    # (b) pads to max_seq_length: the same features, more tokens; the real tokens are the same
    assert runs["b"]["padded_tokens_per_s"] / runs["b"]["real_tokens_per_s"] > \
        runs["c"]["padded_tokens_per_s"] / runs["c"]["real_tokens_per_s"]
    assert results["a/b"] == pytest.approx(runs["a"]["features_per_s"] / runs["b"]["features_per_s"])
    assert results["prediction"]["features"] == 2 * 45  # data/sample.json tiled twice, one window each
    assert "features/s ratios: a/b" in out.splitlines()[-2]  # the table closes the output


def test_gpu_finetune_tiny_matches_transformers(tmp_path):
    pytest.importorskip("transformers", reason="transformers' model is the peer")
    run_script(REPO / "bench" / "gpu_finetune.py", "--tiny", "--json", tmp_path / "r.json")
    r = json.loads((tmp_path / "r.json").read_text())
    # The tiny model has no dropout: train.py and the transformers loop are the same computation from the same
    # weights in the same batches (measured: first loss equal, last 3.3e-6 apart, same metrics).
    assert r["minispan"]["first_loss"] == pytest.approx(r["transformers"]["first_loss"], abs=1e-4)
    assert r["minispan"]["last_loss"] == pytest.approx(r["transformers"]["last_loss"], abs=1e-3)
    assert r["f1_gap"] == 0
    # bf16 against fp32 (measured: 3e-5 relative at most)
    assert r["loss_tracking"]["tracks"] and r["loss_tracking"]["max_relative_diff"] < 1e-3
    assert len(r["loss_tracking"]["steps"]) >= 3


def test_run_gpu_sh_parses():
    subprocess.run(["bash", "-n", str(REPO / "bench" / "run_gpu.sh")], check=True)


def test_step_overhead_runs_and_counts_one_step():
    pytest.importorskip("transformers", reason="transformers' model is the peer")
    out = run_script(REPO / "bench" / "step_overhead.py", "--layers", "2", "--steps", "2")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:4]}
    assert list(rows) == ["minispan", "transformers"]
    # measured, 2 layers: minispan 480 operations (262 computing), transformers 570 (307); with three
    # q/k/v products minispan dispatched 564 (the counts are deterministic: no timing in this test)
    assert all(int(ops) > int(computing) > 100 for ops, computing, ms in rows.values())
    assert int(rows["minispan"][0]) <= 0.9 * int(rows["transformers"][0])
    assert out.splitlines()[-1].startswith("transformers/minispan: ops ")
