"""The synthetic tasks: layout, answers, reach, determinism, errors; and that fit trains and records."""

import pytest
import torch
from torch import nn

from titans_edu.course.tasks import IGNORE, SegmentRecall, SparseCopy, evaluate, fit


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_segment_recall_layout_by_hand():
    task = SegmentRecall(n_pairs=2, n_keys=4, n_values=3, n_filler=5, segment=6, gap=1)
    assert (task.vocab_size, task.seq_len, task.query_start, task.distance) == (12, 18, 12, 9)
    tokens, targets = task.sample(64, gen())
    filler, keys, values = tokens < 5, (tokens >= 5) & (tokens < 9), tokens >= 9
    # segment 0: k v k v then filler; segment 1: filler; segment 2: k v k v then filler
    for start in (0, 12):
        assert keys[:, start : start + 4 : 2].all() and values[:, start + 1 : start + 4 : 2].all()
        assert filler[:, start + 4 : start + 6].all()
    assert filler[:, 6:12].all()
    for b in range(64):
        pairs = {tokens[b, i].item(): tokens[b, i + 1].item() for i in (0, 2)}
        assert len(pairs) == 2  # distinct keys
        asked = [tokens[b, i].item() for i in (12, 14)]
        assert sorted(asked) == sorted(pairs)  # the same keys come back
        for i in (12, 14):
            assert targets[b, i].item() == pairs[tokens[b, i].item()] == tokens[b, i + 1].item()
    scored = task.answer_mask(tokens, targets)
    assert scored.sum().item() == 64 * 2 and (targets[~scored] == IGNORE).all()


def test_segment_recall_is_deterministic_and_out_of_reach():
    task = SegmentRecall(n_pairs=1, segment=16, gap=1)
    a, b = task.sample(4, gen(3)), task.sample(4, gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], task.sample(4, gen(4))[0])
    assert task.distance == 31 and task.chance == pytest.approx(1 / 16)
    assert task.out_of_reach(window=16, depth=1) and task.out_of_reach(window=16, depth=2)
    assert not task.out_of_reach(window=16, depth=3)  # three windows of 15 reach 45 >= 31


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_pairs=5, n_keys=4), "distinct keys"),
    (dict(n_pairs=9, segment=16, n_keys=16), "fit in one segment"),
    (dict(gap=-1), "gap"),
    (dict(n_values=0), "n_values"),
])
def test_segment_recall_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentRecall(**kwargs)


def test_sparse_copy_copies_the_token_before_each_trigger():
    task = SparseCopy(n_data=8, seq_len=40, rate=0.3)
    tokens, targets = task.sample(32, gen())
    assert tokens.shape == targets.shape == (32, 40)
    assert torch.equal(tokens[:, 1:], targets[:, :-1])  # targets are the next tokens
    trig = task.answer_mask(tokens, targets)
    assert trig.any() and not trig[:, 0].any()
    b, i = trig.nonzero(as_tuple=True)
    assert torch.equal(targets[b, i], tokens[b, i - 1])  # after the trigger comes the token before it
    assert (tokens[b, i - 1] < 8).all()  # ... which is plain data
    gaps = [j - i for row in trig for i, j in zip(row.nonzero()[:, 0][:-1], row.nonzero()[:, 0][1:])]
    assert min(gaps) >= 3


def test_sparse_copy_errors():
    with pytest.raises(ValueError, match="rate"):
        SparseCopy(rate=1.5)
    with pytest.raises(ValueError, match="seq_len"):
        SparseCopy(seq_len=2)


class Lookup(nn.Module):
    """Logits from the current token only: enough to learn SparseCopy's marginals, not its copies."""

    def __init__(self, vocab):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, tokens):
        return self.table(tokens)


def test_fit_lowers_the_loss_and_records_everything():
    torch.manual_seed(0)
    task = SparseCopy(n_data=4, seq_len=16)
    model = Lookup(task.vocab_size)
    history = fit(model, task, steps=30, batch=16, lr=0.05, eval_every=10, eval_batch=32)
    assert history.eval_steps == [10, 20, 30] and len(history.loss) == 30 and history.seconds > 0
    assert history.loss[-1] < history.loss[0]
    tokens, targets = task.sample(32, gen(1))  # fit's evaluation batch: seed + 1
    assert (history.final_loss, history.final_accuracy) == evaluate(model, task, tokens, targets)


def test_fit_is_repeatable_and_rejects_bad_arguments():
    task = SparseCopy(n_data=4, seq_len=16)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(fit(Lookup(task.vocab_size), task, steps=5, batch=4, eval_every=5, eval_batch=8).loss)
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="steps"):
        fit(Lookup(task.vocab_size), task, steps=0)
