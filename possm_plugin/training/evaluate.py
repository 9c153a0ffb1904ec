"""Evaluation on held-out trials, decoded the way the live decoder decodes.

Regression: the held-out span of each session is decoded as one continuous stream from a fresh state
(exactly what :class:`~possm_plugin.realtime.streaming.StreamingDecoder` does live), and R2 is computed at chunk
ends per output, then averaged over outputs (x and y) and over sessions. Classification: each trial is
decoded from a fresh state and classified by its last chunk. CTC: each trial from a fresh state,
greedy-decoded, token error rate = edit distance / reference length.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from possm_plugin.data.prepared import PreparedSession
from possm_plugin.model.possm import POSSM
from possm_plugin.model.tokenize import collate
from possm_plugin.training.metrics import ctc_greedy_decode, edit_distance, r2_score

__all__ = ["evaluate_prepared", "predict_span", "loss_fn"]


@torch.no_grad()
def predict_span(model: POSSM, ps: PreparedSession, i0: int, n: int, *, device="cpu", max_chunks: int = 2000) -> np.ndarray:
    """Continuous decode of chunks [i0, i0+n) from a fresh state -> (n, C) model outputs.
    Long spans are decoded in pieces that carry the state (identical to one pass)."""
    outs, state = [], None
    sess = torch.tensor([ps.session_row], device=device)
    for a in range(i0, i0 + n, max_chunks):
        m = min(max_chunks, i0 + n - a)
        t = collate([ps.chunks(a, m, max_tokens=model.config.max_tokens_per_chunk)], device=device)
        out, state = model(t["units"], t["times"], t["mask"], sess, state)
        outs.append(out[0].float().cpu().numpy())
    return np.concatenate(outs, 0)


@torch.no_grad()
def evaluate_prepared(model: POSSM, sessions: list[PreparedSession], *, split: str = "valid", device="cpu") -> dict:
    """Metrics of ``model`` on a split of prepared sessions."""
    was_training = model.training
    model.eval()
    readout = model.config.readout
    per: dict[str, float] = {}
    per_out: dict[str, list[float]] = {}
    try:
        for ps in sessions:
            if not len(ps.split[split]):
                continue
            if readout == "regression":
                a, b = ps.split_span(split)
                i0, i1 = ps.chunk_range(a, b)
                pred = predict_span(model, ps, i0, i1 - i0, device=device)
                ends = (np.arange(i0, i1) * ps.step) + ps.width
                true = ps.targets_at(ends, 1.0)
                r2 = r2_score(true, pred * model.config.target_scale)
                per[ps.sid] = float(np.mean(r2))
                per_out[ps.sid] = [float(v) for v in r2]
            else:
                correct = total = 0
                errs = ref_len = 0
                for k in ps.split[split]:
                    ta, tb = ps.session.trials[k]
                    i0, i1 = ps.chunk_range(ta, tb)
                    if i1 <= i0:
                        continue
                    n = i1 - i0 if readout == "ctc" else min(i1 - i0, 20)
                    out = predict_span(model, ps, i0, n, device=device)
                    if readout == "classification":
                        correct += int(out[-1].argmax() == ps.session.trial_labels[k])
                        total += 1
                    else:
                        hyp = ctc_greedy_decode(out)
                        ref = ps.session.trial_labels_seq(k)
                        errs += edit_distance(ref, hyp)
                        ref_len += len(ref)
                per[ps.sid] = correct / max(total, 1) if readout == "classification" else errs / max(ref_len, 1)
    finally:
        model.train(was_training)
    mean = float(np.mean(list(per.values()))) if per else float("nan")
    if readout == "regression":
        return {"r2": mean, "r2_per_session": per, "r2_per_output": per_out}
    if readout == "classification":
        return {"accuracy": mean, "accuracy_per_session": per}
    return {"token_error_rate": mean, "token_error_rate_per_session": per}


def loss_fn(model: POSSM, out: torch.Tensor, batch) -> torch.Tensor:
    """The training loss of a batch: phase-weighted MSE, cross-entropy at the trial's last chunk, or CTC."""
    readout = model.config.readout
    if readout == "regression":
        err = ((out - batch.targets) ** 2).mean(-1)
        return (err * batch.weights).sum() / batch.weights.sum().clamp(min=1e-6)
    if readout == "classification":
        logits = out[torch.arange(out.shape[0], device=out.device), batch.last]
        return F.cross_entropy(logits, batch.labels)
    logp = out.log_softmax(-1).transpose(0, 1)  # (T, B, C+1)
    targets = torch.cat([torch.as_tensor(s, dtype=torch.long) + 1 for s in batch.label_seqs]).to(out.device)
    tlen = torch.tensor([len(s) for s in batch.label_seqs], device=out.device)
    return F.ctc_loss(logp, targets, batch.lengths, tlen, blank=0, zero_infinity=True)
