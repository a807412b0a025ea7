"""Checkpoints: everything a killed run needs to continue exactly where it was (docs/05-training.md).

    checkpoints/step-N/    config.json, model.safetensors   the model (save_model)
                           trainer_state.pt                 the step, AdamW's moments, the schedule, the fp16 loss
                                                            scale, each process's random-number states and loss sums

Written under a temporary name and renamed when complete, so a killed run leaves the old one or the new one; only the
newest is kept. The data order is a function of the seed and the epoch (loop.batch_plan): a resume skips ahead.
"""
import contextlib
import json
import logging
import os
import shutil
import types
from pathlib import Path

import torch

from minispan.files import atomic_write
from minispan.tensor_files import torch_load
from minispan.weights import save_model

logger = logging.getLogger("minispan")


def latest_checkpoint(output_dir):
    """The newest complete checkpoints/step-N (temporary names start with '.', so they never match)."""
    found = [(int(path.name[len("step-"):]), path) for path in (Path(output_dir) / "checkpoints").glob("step-*")
             if path.name[len("step-"):].isdigit() and (path / "trainer_state.pt").is_file()]
    return max(found)[1] if found else None


def save_checkpoint(output_dir, model, opt, rt, progress):
    """checkpoints/step-N/ for progress.step, then the older ones deleted. Every process calls it: rank 0 stores all
    their RNG states (dropout) and loss sums, so a resumed run goes on as the uninterrupted one; only rank 0 writes."""
    rng = {"cpu": torch.get_rng_state()}  # this process's RNG states (dropout), as tensors: torch.load(weights_only)
    if rt.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(rt.device)
    gathered = [(rng, progress.sums().cpu())] * rt.world_size  # then each process's own
    if rt.world_size > 1:
        torch.distributed.all_gather_object(gathered, gathered[0])
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
        state = {"step": progress.step, "optimizer": opt.optimizer.state_dict(), "rng": [r for r, _ in gathered],
                 "scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict(),
                 "sums": [s for _, s in gathered]}
        with atomic_write(tmp / "trainer_state.pt", "wb") as f:  # flushed to disk before the rename
            torch_save(state, f)
        if final.exists():  # a resumed run re-reaching a step it had saved before being killed
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno:  # a full disk, say: name the checkpoint, not its temporary folder
            raise OSError(e.errno, f"{final}: cannot write: {e.strerror} (any earlier checkpoint is kept)") from None
        raise
    for old in checkpoints.iterdir():  # keep only the newest: it holds everything a resume needs
        if old != final:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def torch_save(obj, f):
    """torch.save, raising a failed write as itself: torch's zip writer swallows the OSError (a full disk)
    and fails later with 'RuntimeError: [enforce fail at inline_container.cc:672] unexpected pos'."""
    failed = []

    def write(data):
        try:
            return f.write(data)
        except OSError as e:
            failed.append(e)
            raise

    try:
        torch.save(obj, types.SimpleNamespace(write=write, flush=f.flush))
    except RuntimeError as e:
        raise (failed[0] if failed else e) from None


def load_trainer_state(checkpoint, opt, rt):
    """Restore what save_checkpoint stored (the model is load_model's). Returns the step to continue from
    and this process's running sums since the last log line ([loss_sum, seen, nonfinite])."""
    path = checkpoint / "trainer_state.pt"
    state = check_trainer_state(path, torch_load(path), opt)
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:
        opt.scaler.load_state_dict(state["scaler"])
    sums = state.get("sums", [torch.zeros(3)] * len(state["rng"]))  # saved before the sums were: from 0
    if len(state["rng"]) == rt.world_size:
        rng = state["rng"][rt.rank]
        torch.set_rng_state(rng["cpu"])
        if rt.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], rt.device)
        return state["step"], sums[rt.rank]
    # Another process count: dropout can't continue the same streams, and rank 0 carries the sums' total.
    if rt.rank == 0:
        logger.warning("%s was saved by %d process(es), resumed by %d: reseeding dropout",
                       checkpoint, len(state["rng"]), rt.world_size)
    torch.manual_seed(state["step"] * rt.world_size + rt.rank)
    return state["step"], sum(sums) if rt.rank == 0 else torch.zeros(3)


def check_trainer_state(path, state, opt):
    """A trainer_state.pt cut short, edited or from another model is one line naming it, not a traceback
    (or a run going on wrong) later. This run's own states show what a resumable one holds."""
    if not (isinstance(state, dict) and {"step", "optimizer", "scheduler", "scaler", "rng"} <= set(state)
            and isinstance(state["rng"], list) and state["rng"]):
        raise ValueError(f"{path}: expected a dict with step, optimizer, scheduler, scaler and rng (a list), got "
                         f"{sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__}")
    rngs, saved = state["rng"], state["optimizer"]
    for name, own in (("step", 0), ("optimizer", opt.optimizer.state_dict()), ("scheduler", opt.scheduler.state_dict()),
                      ("scaler", opt.scaler.state_dict() if state["scaler"] else {}),
                      ("rng", [{"cpu": torch.get_rng_state()}] * len(rngs)), ("sums", [torch.zeros(3)] * len(rngs))):
        if name in state and (problem := _unlike(state[name], own, name)):
            raise ValueError(f"{path}: {problem}")
    params = dict(zip((i for group in saved["param_groups"] for i in group["params"]),
                      (p for group in opt.optimizer.param_groups for p in group["params"])))
    for i, moments in saved["state"].items():  # AdamW's step and moments, keyed by the ids in param_groups
        if i not in params or _unlike(moments, {k: params[i].to("meta") for k in moments if k != "step"}, ""):
            raise ValueError(f"{path}: optimizer['state'][{i!r}] does not fit the model's parameters")
    for rng in rngs:
        try:
            torch.Generator().set_state(rng["cpu"])  # on a scratch generator: is it a state at all?
        except RuntimeError as e:
            raise ValueError(f"{path}: rng: {e}") from None
    return state


def _unlike(saved, own, where):
    """Where `saved` (read from a file) differs in structure from `own` (this run's own state): another
    type, a missing key, another length or tensor shape. '' when nowhere."""
    if type(saved) is not type(own):
        return f"{where} is {type(saved).__name__}, expected {type(own).__name__}"
    if isinstance(own, torch.Tensor) and (saved.shape, saved.dtype) != (own.shape, own.dtype):
        return f"{where} is {saved.dtype} {tuple(saved.shape)}, expected {own.dtype} {tuple(own.shape)}"
    if isinstance(own, (list, tuple)) and len(saved) != len(own):
        return f"{where} has {len(saved)} entries, expected {len(own)}"
    if isinstance(own, dict) and (missing := [key for key in own if key not in saved]):
        return f"{where} lacks {missing[0]!r}"
    items = own.items() if isinstance(own, dict) else enumerate(own) if isinstance(own, (list, tuple)) else ()
    return next(filter(None, (_unlike(saved[key], value, f"{where}[{key!r}]") for key, value in items)), "")


def truncate_log(log_file, step):
    """Keep only log.jsonl's lines up to `step`, where a resumed run continues: the killed run may have
    logged steps after its last checkpoint, which the resumed run logs again."""
    if not log_file.is_file():
        return
    kept = []
    for line in log_file.read_text(encoding="utf-8").splitlines(keepends=True):
        with contextlib.suppress(ValueError, KeyError, TypeError):  # a line cut short by the kill
            if json.loads(line)["step"] <= step:
                kept.append(line)
    with atomic_write(log_file) as f:
        f.writelines(kept)
