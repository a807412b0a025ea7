"""Where a run computes: --device and --precision resolved and checked, and torchrun's processes."""
import os
import re
from dataclasses import dataclass

import torch


@dataclass
class Runtime:
    """Where a run computes: these travel together through the loop and the prediction."""
    device: torch.device
    precision: str = "fp32"  # "bf16", "fp16" (with loss scaling) or "fp32"
    rank: int = 0  # this process, of world_size (torchrun); rank 0 writes the files
    world_size: int = 1


class TrainingError(ValueError):
    """Bad settings or input for a training run: train.py prints it as one line and exits with status 2."""


def resolve_device(name, local_rank=0, world_size=1):
    """--device -> torch.device. Under torchrun each process takes the GPU numbered by its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d*)?", name):
        raise TrainingError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: no CUDA GPU is available to this torch ({torch.__version__}); "
                            "use --device cpu")
    if name != "cuda" and world_size > 1:
        raise TrainingError(f"--device {name}: under torchrun each process uses the GPU of its LOCAL_RANK; "
                            "use --device cuda")
    index = int(name[len("cuda:"):] or local_rank)  # plain "cuda": under torchrun, the GPU of this LOCAL_RANK
    if not 0 <= index < torch.cuda.device_count():
        raise TrainingError(f"--device {name}: GPU {index} does not exist ({torch.cuda.device_count()} visible)")
    return torch.device("cuda", index)


def resolve_precision(precision, device):
    """Default: bf16 on GPUs that have it (Ampere and later), fp16 + loss scaling on older ones, fp32 on CPU."""
    if precision is None:
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("--precision fp16 needs a CUDA GPU (use bf16 or fp32 on the CPU)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                            "use fp16")
    return precision


def start_runtime(cfg):
    """This process's Runtime, from torchrun's RANK/LOCAL_RANK/WORLD_SIZE (none: one process), --device, --precision."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = (int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])) if world_size > 1 else (0, 0)
    device = resolve_device(cfg.device, local_rank, world_size)
    return Runtime(device, resolve_precision(cfg.precision, device), rank, world_size)


def main_process_first(fetch, is_main, world_size):
    """Rank 0 runs fetch() (downloading what is missing) while the others wait; then they run it on what
    is there. Each process fetches once: fetch() also validates, which reads the whole file."""
    result = fetch() if is_main else None
    if world_size > 1:
        torch.distributed.barrier()
    return result if is_main else fetch()
