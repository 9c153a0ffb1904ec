"""POSSM: spike tokens -> per-chunk latent (cross-attention) -> recurrent backbone -> output
cross-attention over the last k backbone outputs -> readout.

Shape letters: B sequences (streams), T chunks, N tokens per chunk, L latents per chunk, D token
features, H backbone output features, k context chunks, C outputs.

Times: spike tokens carry their time since the chunk start; latent queries sit at the chunk centre.
Backbone outputs are stamped at chunk ends, and the output query of chunk j sits at the end of chunk
j; times in the output attention are taken relative to that query (0, -step, -2*step for the keys),
which RoPE makes equivalent to absolute times and keeps streaming and batched forms identical.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from possm_plugin.errors import ConfigError
from possm_plugin.model.backbones import State, get_backbone
from possm_plugin.model.config import ModelConfig
from possm_plugin.model.nn import FeedForward, RotaryCrossAttention, RotaryTimeEmbedding
from possm_plugin.model.vocab import Vocabulary

__all__ = ["POSSM"]


class POSSM(nn.Module):
    """The POSSM decoder.

    Args:
        config: the architecture.
        unit_ids: unit vocabulary (string ids such as ``session/unit``).
        session_ids: session vocabulary.
        session_units: for each session, its unit ids in channel order (used to map streams).
        session_fingerprints: for each session, the :attr:`~possm_plugin.data.session.Session.fingerprint`
            of the recording it was trained on (see :mod:`possm_plugin.data.identity`).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        unit_ids: Sequence[str] = (),
        session_ids: Sequence[str] = (),
        session_units: dict[str, list[str]] | None = None,
        session_fingerprints: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.unit_vocab = Vocabulary(unit_ids, kind="unit")
        self.session_vocab = Vocabulary(session_ids, kind="session")
        self.session_units: dict[str, list[str]] = {k: list(v) for k, v in (session_units or {}).items()}
        self.session_fingerprints: dict[str, str] = {str(k): str(v) for k, v in (session_fingerprints or {}).items()}
        d = c.dim
        self.unit_emb = nn.Embedding(len(self.unit_vocab), d)
        self.session_emb = nn.Embedding(len(self.session_vocab), d)
        nn.init.normal_(self.unit_emb.weight, std=c.emb_init_scale)
        nn.init.normal_(self.session_emb.weight, std=c.emb_init_scale)
        self.latent_emb = nn.Parameter(torch.randn(c.num_latents, d) * c.emb_init_scale)
        self.task_emb = nn.Parameter(torch.randn(d) * c.emb_init_scale)
        self.rotary = RotaryTimeEmbedding(head_dim=c.dim_head, rotate_dim=c.dim_head // 2, t_min=c.t_min, t_max=c.t_max)

        self.enc_atn = RotaryCrossAttention(dim=d, heads=c.cross_heads, dim_head=c.dim_head, dropout=c.atn_dropout)
        self.enc_ffn = nn.Sequential(nn.LayerNorm(d), FeedForward(dim=d, mult=c.ffn_mult, dropout=c.ffn_dropout))

        factory = get_backbone(c.backbone)
        try:
            self.backbone = factory(d_input=c.num_latents * d, **c.backbone_kwargs)
        except TypeError as exc:
            raise ConfigError(f"backbone {c.backbone!r} rejected backbone_kwargs {c.backbone_kwargs}: {exc}") from None
        h = self.backbone.d_output

        self.dec_atn = RotaryCrossAttention(dim=d, context_dim=h, heads=c.cross_heads, dim_head=c.dim_head, dropout=c.atn_dropout)
        self.dec_ffn = nn.Sequential(nn.LayerNorm(d), FeedForward(dim=d, mult=c.ffn_mult, dropout=c.ffn_dropout))
        n_out = c.output_dim + (1 if c.readout == "ctc" else 0)
        self.readout = nn.Linear(d, n_out)

        k = c.context_chunks
        # constant rotations: latent queries at the chunk centre; output keys at -(k-1-i)*step; query at 0
        for name, t in (
            ("_latent_rot", torch.full((c.num_latents,), c.chunk_width / 2)),
            ("_ctx_rot", -c.chunk_step * torch.arange(k - 1, -1, -1, dtype=torch.float32)),
            ("_query_rot", torch.zeros(1)),
        ):
            cos, sin = self.rotary(t)
            self.register_buffer(name + "_cos", cos.unsqueeze(0), persistent=False)
            self.register_buffer(name + "_sin", sin.unsqueeze(0), persistent=False)
        self._kv_cache: tuple[tuple, torch.Tensor] | None = None
        self._const_cache: dict[str, tuple[tuple, torch.Tensor]] = {}

    # -- vocabularies ------------------------------------------------------------------------
    @property
    def n_units(self) -> int:
        return len(self.unit_vocab) - 1

    def extend_units(self, ids: Sequence[str]) -> list[str]:
        """Add unit ids (new rows drawn from N(0, emb_init_scale)); existing rows are untouched."""
        added = self.unit_vocab.extend(ids)
        if added:
            self.unit_emb = _grow(self.unit_emb, len(added), self.config.emb_init_scale)
        return added

    def extend_sessions(
        self, ids: Sequence[str], *, units: dict[str, list[str]] | None = None, fingerprints: dict[str, str] | None = None
    ) -> list[str]:
        """Add session ids (and optionally their ordered unit lists and fingerprints)."""
        added = self.session_vocab.extend(ids)
        if added:
            self.session_emb = _grow(self.session_emb, len(added), self.config.emb_init_scale)
        for sid, u in (units or {}).items():
            self.session_units[sid] = list(u)
        for sid, fp in (fingerprints or {}).items():
            self.session_fingerprints[sid] = str(fp)
        return added

    def subset_units(self, ids: Sequence[str]) -> None:
        """Keep only ``ids`` (in that order); their embeddings move with them."""
        vocab, rows = self.unit_vocab.subset(ids)
        w = self.unit_emb.weight.data[torch.from_numpy(rows).to(self.unit_emb.weight.device)]
        self.unit_vocab = vocab
        self.unit_emb = nn.Embedding.from_pretrained(w.clone(), freeze=False)
        keep = set(ids)
        self.session_units = {s: u for s, u in self.session_units.items() if set(u) <= keep}

    # -- the pieces ----------------------------------------------------------------------------
    def unit_kv_table(self) -> torch.Tensor:
        """Keys/values of every unit (V, 2*H*d). A token is its unit's embedding, so its key and value
        (before rotation by its time) depend on the unit only: project the vocabulary once and gather.
        Cached while gradients are off and the embedding and projection weights are unchanged."""
        w = self.unit_emb.weight
        if torch.is_grad_enabled():
            return self.enc_atn.project_context(w)
        norm = self.enc_atn.norm_ctx
        key = (w.data_ptr(), w._version, self.enc_atn.to_kv.weight._version, norm.weight._version, norm.bias._version)
        if self._kv_cache is None or self._kv_cache[0] != key:
            self._kv_cache = (key, self.enc_atn.project_context(w))
        return self._kv_cache[1]

    def encode(self, units: torch.Tensor, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tokens of chunks (B, T, N) -> backbone inputs (B, T, L*D)."""
        b, t, n = units.shape
        kv = self.unit_kv_table()[units.reshape(b * t, n)]
        k_rot = self.rotary(times.reshape(b * t, n))
        lat_rot = (self._latent_rot_cos, self._latent_rot_sin)
        q = self._cached("latent_q", lambda: self.enc_atn.project_query(self.latent_emb.unsqueeze(0), lat_rot))
        lat = self.latent_emb.unsqueeze(0)
        x = lat + self.enc_atn.attend(q.expand(b * t, -1, -1, -1), kv, lat_rot, k_rot, mask.reshape(b * t, n))
        x = x + self.enc_ffn(x)
        return x.reshape(b, t, -1)

    def _cached(self, name: str, compute):
        """Values that depend on the weights only (constant queries) are cached while gradients are off."""
        if torch.is_grad_enabled():
            return compute()
        key = tuple((p.data_ptr(), p._version) for p in self.parameters(recurse=False)) + tuple(
            (p.data_ptr(), p._version) for m in (self.enc_atn, self.dec_atn, self.session_emb) for p in m.parameters()
        )
        hit = self._const_cache.get(name)
        if hit is None or hit[0] != key:
            hit = (key, compute())
            self._const_cache[name] = hit
        return hit[1]

    def decode(self, ctx: torch.Tensor, ctx_mask: torch.Tensor, session: torch.Tensor) -> torch.Tensor:
        """Backbone outputs of the k chunks each query sees (B, T, k, H), their mask (B, T, k) and the
        session rows (B,) -> readout (B, T, C)."""
        b, t, k, h = ctx.shape
        q_rot = (self._query_rot_cos, self._query_rot_sin)
        rows = self._cached("session_q", lambda: self.session_emb.weight + self.task_emb)[session]  # (B, D)
        qh = self._cached("session_qh", lambda: self.dec_atn.project_query(
            (self.session_emb.weight + self.task_emb).unsqueeze(1), q_rot))[session]  # (B, H, 1, d)
        x0 = rows.unsqueeze(1).expand(b, t, -1).reshape(b * t, 1, -1)
        qh = qh.unsqueeze(1).expand(b, t, *qh.shape[1:]).reshape(b * t, *qh.shape[1:])
        kv = self.dec_atn.project_context(ctx.reshape(b * t, k, h))
        x = x0 + self.dec_atn.attend(qh, kv, q_rot, (self._ctx_rot_cos, self._ctx_rot_sin), ctx_mask.reshape(b * t, k))
        x = x + self.dec_ffn(x)
        return self.readout(x).reshape(b, t, -1)

    # -- sequence form -------------------------------------------------------------------------
    def forward(
        self,
        units: torch.Tensor,
        times: torch.Tensor,
        mask: torch.Tensor,
        session: torch.Tensor,
        state: State | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Decode T chunks.

        Args:
            units, times, mask: tokens (B, T, N) from :func:`possm_plugin.model.tokenize.collate`.
            session: session rows (B,).
            state: a stream state from :meth:`initial_state` / :meth:`step` to continue from, or None
                to start fresh.

        Returns:
            outputs (B, T, C) (scaled targets, class logits, or CTC log-probabilities' logits) and the
            state after the last chunk (usable by :meth:`step`).
        """
        b, t, _ = units.shape
        k = self.config.context_chunks
        z = self.encode(units, times, mask)
        if state is None:
            bb_state, hist, seen = None, torch.zeros(b, k - 1, self.backbone.d_output, device=z.device, dtype=z.dtype), torch.zeros(b, dtype=torch.long, device=z.device)
        else:
            *bb_state, hist, seen = state
            bb_state = tuple(bb_state)
        y, bb_new = self.backbone(z, bb_state)
        full = torch.cat([hist, y], dim=1)  # (B, k-1+T, H)
        ctx = full.unfold(1, k, 1).permute(0, 1, 3, 2)  # (B, T, k, H)
        # slot i of chunk j holds chunk j-(k-1)+i; valid if that chunk exists in this stream
        pos = torch.arange(t, device=z.device).unsqueeze(1) - (k - 1) + torch.arange(k, device=z.device)
        ctx_mask = (pos.unsqueeze(0) + seen.view(b, 1, 1)) >= 0
        out = self.decode(ctx, ctx_mask, session)
        new_hist = full[:, -(k - 1):] if k > 1 else full[:, :0]
        return out, (*bb_new, new_hist, seen + t)

    # -- streaming form ----------------------------------------------------------------------
    def initial_state(self, batch_size: int, *, device=None) -> State:
        """Fresh stream state: (*backbone state, history (B, k-1, H), chunks seen (B,))."""
        device = device or self.task_emb.device
        k = self.config.context_chunks
        return (
            *self.backbone.initial_state(batch_size, device=device, dtype=self.task_emb.dtype),
            torch.zeros(batch_size, k - 1, self.backbone.d_output, device=device, dtype=self.task_emb.dtype),
            torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    def step(
        self, units: torch.Tensor, times: torch.Tensor, mask: torch.Tensor, session: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """Decode one chunk per stream: tokens (B, N) -> outputs (B, C) and the new state. O(1)."""
        units.shape[0]
        k = self.config.context_chunks
        *bb_state, hist, seen = state
        z = self.encode(units.unsqueeze(1), times.unsqueeze(1), mask.unsqueeze(1))[:, 0]
        y, bb_new = self.backbone.step(z, tuple(bb_state))
        ctx = torch.cat([hist, y.unsqueeze(1)], dim=1)  # (B, k, H)
        ctx_mask = (torch.arange(k, device=z.device) - (k - 1) + seen.unsqueeze(1)) >= 0
        out = self.decode(ctx.unsqueeze(1), ctx_mask.unsqueeze(1), session)[:, 0]
        return out, (*bb_new, ctx[:, 1:], seen + 1)

    # -- helpers -------------------------------------------------------------------------------
    def n_parameters(self, *, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _grow(emb: nn.Embedding, n_new: int, std: float) -> nn.Embedding:
    old = emb.weight.data
    new_rows = torch.randn(n_new, old.shape[1], device=old.device, dtype=old.dtype) * std
    grown = nn.Embedding(old.shape[0] + n_new, old.shape[1], device=old.device, dtype=old.dtype)
    with torch.no_grad():
        grown.weight.copy_(torch.cat([old, new_rows], dim=0))
    grown.weight.requires_grad_(emb.weight.requires_grad)
    return grown
