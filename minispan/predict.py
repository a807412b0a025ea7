"""Prediction and scoring of the dev set: the model's logits for every window, post-processed into answers and null
odds, scored with the official SQuAD v2 metrics. Writes predictions.json, null_odds.json, span_predictions.json (every
question's best span, before the cut at null odds 0) and eval_results.json; docs/07-scoring.md says why both.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from minispan.features import batch_indices, batch_width, make_batch
from minispan.files import write_json
from minispan.metrics import squad_v2_metrics
from minispan.postprocess import postprocess, write_predictions
from minispan.step import autocast


@dataclass
class DevSet:
    examples: list  # the questions (Example)
    features: list  # their windows (Feature)
    dataset: list  # the file's `data` list holding just those questions, as the official evaluation takes it


@torch.no_grad()
def predict_logits(model, features, device, precision, *, batch_size=64, pad_token_id=0, progress=False):
    """Start and end logits for every feature, unpadded, in the features' order (as postprocess wants)."""
    model.eval()
    lengths = [len(f.input_ids) for f in features]
    # The logits stay on the device until every batch is queued: copying each back as it comes makes the host wait.
    outputs = []
    for indices in tqdm(batch_indices(lengths, batch_size), desc="predict", disable=not progress):
        # Rounded widths, as in training: a shape's first batch costs extra (cuDNN plans its attention).
        width = batch_width([lengths[i] for i in indices], model.config.max_position_embeddings)
        batch = make_batch([features[i] for i in indices], pad_token_id, pin_memory=device.type == "cuda", length=width)
        with autocast(device, precision):
            out = model(**{name: t.to(device, non_blocking=True) for name, t in batch.items()})
        outputs.append((indices, out.start_logits.float(), out.end_logits.float()))
    start_logits, end_logits = [None] * len(features), [None] * len(features)
    for indices, starts, ends in outputs:
        starts, ends = starts.cpu().numpy(), ends.cpu().numpy()
        for row, i in enumerate(indices):
            start_logits[i], end_logits[i] = starts[row, :lengths[i]], ends[row, :lengths[i]]
    return start_logits, end_logits


def evaluate(model, dev, rt, pad_token_id, output_dir=None):
    """Predict the dev questions, post-process, score with the official metrics; write the results when
    output_dir is given. Returns the metrics (an OrderedDict with the official keys)."""
    start_logits, end_logits = predict_logits(model, dev.features, rt.device, rt.precision,
                                              pad_token_id=pad_token_id, progress=output_dir is not None)
    if not all(np.isfinite(logits).all() for logits in start_logits + end_logits):
        raise ValueError("the model's outputs are not finite (NaN or inf): training diverged; see the loss in "
                         "log.jsonl, and try a lower --lr")
    predictions, null_odds, nbest = postprocess(dev.examples, dev.features, start_logits, end_logits)
    # Every best span with its null odds, cut by the metrics at 0: raw EM/F1 are predictions.json's, and best_* can
    # also try thresholds above 0, where predictions.json says "" (as SpanBERT scored; docs/07-scoring.md).
    best_spans = {qid: next(filter(None, (entry["text"] for entry in entries)), "") for qid, entries in nbest.items()}
    metrics = squad_v2_metrics(dev.dataset, best_spans, na_probs=null_odds, na_prob_thresh=0.0)
    if output_dir is not None:
        write_predictions(output_dir, predictions, null_odds)
        # `evaluate.py span_predictions.json DEV -n null_odds.json -t 0` gives eval_results.json again (without --limit)
        write_json(Path(output_dir) / "span_predictions.json", best_spans)
        write_json(Path(output_dir) / "eval_results.json", metrics)
    return metrics
