import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from possm_plugin.errors import ConfigError, UnknownUnitError
from possm_plugin.model.checkpoint import load_checkpoint, save_checkpoint
from possm_plugin.model.vocab import BLANK, Vocabulary


def test_rows_are_stable_and_blank_is_row_zero():
    v = Vocabulary(["a/1", "a/2"])
    assert v.index(BLANK) == 0 and v.index("a/1") == 1 and v.index("a/2") == 2
    added = v.extend(["a/2", "b/1"])
    assert added == ["b/1"]
    assert [v.index(k) for k in ("a/1", "a/2", "b/1")] == [1, 2, 3]
    assert v.ids == ["a/1", "a/2", "b/1"] and len(v) == 4


def test_unknown_ids_raise_one_clear_error_listing_them():
    v = Vocabulary(["a/1"])
    with pytest.raises(UnknownUnitError, match=r"2 unit id\(s\) not in the vocabulary: 'x/1', 'x/2'") as e:
        v.lookup(["a/1", "x/1", "x/2"])
    assert e.value.unknown == ["x/1", "x/2"]
    with pytest.raises(ConfigError, match="non-empty strings"):
        v.extend([""])


def test_subset_returns_rows_to_gather():
    v = Vocabulary(["a", "b", "c"])
    sub, rows = v.subset(["c", "a"])
    assert sub.ids == ["c", "a"]
    assert rows.tolist() == [0, 3, 1]


def test_model_extend_keeps_embeddings_attached_to_ids():
    m = make_tiny_model(n_units=5)
    before = {u: m.unit_emb.weight[m.unit_vocab.index(u)].detach().clone() for u in m.unit_vocab.ids}
    m.extend_units(["new/u0", "new/u1"])
    assert m.unit_emb.weight.shape[0] == 8
    for u, row in before.items():
        assert torch.equal(m.unit_emb.weight[m.unit_vocab.index(u)], row)
    new_rows = m.unit_emb.weight[-2:].detach()
    assert 0 < new_rows.std() < 0.1  # N(0, 0.02) initialisation
    m.subset_units(["new/u1", "sess0/u003"])
    assert m.unit_vocab.ids == ["new/u1", "sess0/u003"]
    assert torch.equal(m.unit_emb.weight[2], before["sess0/u003"])


def test_vocabularies_are_saved_and_remapped_by_id(tmp_path):
    m = make_tiny_model(n_units=6)
    m.extend_units(["other/u9"])
    m.extend_sessions(["other"], units={"other": ["other/u9"]})
    path = save_checkpoint(m, tmp_path / "ck")
    m2, doc = load_checkpoint(path)
    assert m2.unit_vocab == m.unit_vocab and m2.session_vocab == m.session_vocab
    assert doc["session_units"]["other"] == ["other/u9"]
    for u in m.unit_vocab.ids:
        i = m.unit_vocab.index(u)
        assert torch.equal(m2.unit_emb.weight[m2.unit_vocab.index(u)], m.unit_emb.weight[i])


def test_from_list_rejects_duplicates():
    with pytest.raises(ConfigError, match="duplicated"):
        Vocabulary.from_list(["a", "a"])
    assert Vocabulary.from_list([BLANK, "a"]).ids == ["a"]
    assert np.array_equal(Vocabulary(["a", "b"]).lookup(["b", "a"]), [2, 1])
