"""Checkpoints: everything a killed run needs to continue exactly where it was.

    checkpoints/step-N/    config.json, model.safetensors   the model (save_model)
                           trainer_state.pt                 the step, AdamW's moments, the schedule, the fp16
                                                            loss scale, every process's random-number states

A checkpoint is written under a temporary name and renamed when complete, so a run killed at any moment
leaves the previous checkpoint or the new one, never half of one. Only the newest is kept. The data order
is a function of the seed and the epoch (loop.batch_plan), so a resumed run recomputes it and skips ahead.
"""
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from minispan.files import atomic_write
from minispan.weights import save_model

logger = logging.getLogger("minispan")


def latest_checkpoint(output_dir):
    """The newest complete checkpoints/step-N (temporary names start with '.', so they never match)."""
    found = []
    for path in (Path(output_dir) / "checkpoints").glob("step-*"):
        step = path.name[len("step-"):]
        if step.isdigit() and (path / "trainer_state.pt").is_file():
            found.append((int(step), path))
    return max(found)[1] if found else None


def rng_state(device):
    """This process's torch RNG states (dropout, head init) as tensors, so torch.load(weights_only) reads them."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(output_dir, model, opt, rt, progress):
    """checkpoints/step-N/ for progress.step; the older checkpoints are then deleted. Every process calls
    it (each draws its own dropout: rank 0 stores all their RNG states); only rank 0 writes."""
    states = [None] * rt.world_size
    if rt.world_size > 1:
        torch.distributed.all_gather_object(states, rng_state(rt.device))
    else:
        states = [rng_state(rt.device)]
    if rt.rank != 0:
        return
    checkpoints = Path(output_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"step-{progress.step}"
    tmp = checkpoints / f".step-{progress.step}.tmp"  # only rank 0 writes here: a fixed name cannot collide
    shutil.rmtree(tmp, ignore_errors=True)  # left by a crash mid-write
    tmp.mkdir()  # with the usual permissions (mkdtemp's would be private)
    try:
        save_model(model, tmp)
        state = {"step": progress.step, "optimizer": opt.optimizer.state_dict(),
                 "scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict(), "rng": states}
        with atomic_write(tmp / "trainer_state.pt", "wb") as f:  # flushed to disk before the rename
            torch.save(state, f)
        if final.exists():  # a resumed run re-reaching a step it had saved before being killed
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in checkpoints.iterdir():  # keep only the newest: it holds everything a resume needs
        if old != final:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def load_trainer_state(checkpoint, opt, rt):
    """Restore what save_checkpoint stored (the model is load_model's); return the step to continue from."""
    state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=True)
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        opt.scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == rt.world_size:
        rng = state["rng"][rt.rank]
        torch.set_rng_state(rng["cpu"])
        if rt.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], rt.device)
    else:  # another process count: dropout can't continue the same streams
        if rt.rank == 0:
            logger.warning("%s was saved by %d process(es), resumed by %d: reseeding dropout",
                           checkpoint, len(state["rng"]), rt.world_size)
        torch.manual_seed(state["step"] * rt.world_size + rt.rank)
    return state["step"]


def truncate_log(log_file, step):
    """Keep only log.jsonl's lines up to `step`, where a resumed run continues: the killed run may have
    logged steps after its last checkpoint, which the resumed run logs again."""
    if not log_file.is_file():
        return
    kept = []
    for line in log_file.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by the kill
            pass
    with atomic_write(log_file) as f:
        f.writelines(kept)
