"""The synthetic streams of notebooks 03-05: timelines, fact tables, features and input checks."""

import pytest
import torch

from titans_edu.course.streams import episode_stream, event_stream, shift_stream


def _unit_rows(x):
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1], dtype=x.dtype))


def test_event_stream_timeline_and_table():
    s = event_stream(length=120, dim=8, n_familiar=3, events=(50, 80), n_noise=5, warmup=20, batch=2, seed=3)
    assert s.keys.shape == (2, 120, 8) and s.values.shape == (2, 120, 8) and s.fact.shape == (120,)
    assert s.groups == ("familiar", "event", "noise")
    assert s.fact[50] == 3 and s.fact[80] == 4  # events show the first new facts, in order
    assert s.feature[50] == 1 and s.feature[80] == 1
    noise_tokens = (s.feature == -1).nonzero().flatten()
    assert len(noise_tokens) == 5 and noise_tokens.min() >= 20
    assert torch.equal(s.tokens_of("noise").nonzero().flatten(), noise_tokens)
    # every new fact appears exactly once; familiar facts fill the rest
    counts = torch.bincount(s.fact, minlength=len(s.group))
    assert torch.all(counts[3:] == 1) and counts[:3].sum() == 120 - 7
    assert _unit_rows(s.fact_keys) and _unit_rows(s.fact_values)
    b = torch.arange(2)[:, None]
    assert torch.equal(s.keys, s.fact_keys[b, s.fact]) and torch.equal(s.values, s.fact_values[b, s.fact])


def test_batch_shares_the_timeline_but_not_the_facts_and_seeds_repeat():
    s = event_stream(length=60, dim=8, events=(30,), batch=3, seed=1)
    assert not torch.allclose(s.fact_keys[0], s.fact_keys[1])
    again = event_stream(length=60, dim=8, events=(30,), batch=3, seed=1)
    other = event_stream(length=60, dim=8, events=(30,), batch=3, seed=2)
    assert torch.equal(s.keys, again.keys) and torch.equal(s.fact, again.fact)
    assert not torch.equal(s.keys, other.keys)


def test_kvq_has_one_head_and_reads_its_own_key():
    s = event_stream(length=40, dim=8, events=(20,), batch=2)
    k, v, q = s.kvq()
    assert k.shape == (2, 1, 40, 8) and v.shape == (2, 1, 40, 8) and torch.equal(q, k)


def test_episode_stream_cycles_its_new_facts():
    s = episode_stream(length=100, dim=8, n_familiar=5, start=40, episode_length=10, n_episode=3)
    assert s.fact[40:50].tolist() == [5, 6, 7, 5, 6, 7, 5, 6, 7, 5]
    assert s.feature[40:50].eq(1).all() and s.feature.sum() == 10
    assert s.fact[:40].max() < 5 and s.fact[50:].max() < 5
    assert torch.equal(s.facts_in("episode"), torch.tensor([5, 6, 7]))


def test_episode_value_noise_moves_values_not_facts():
    clean = episode_stream(length=80, dim=16, start=30, value_noise=0.0, seed=4)
    noisy = episode_stream(length=80, dim=16, start=30, value_noise=0.5, seed=4)
    assert torch.equal(clean.fact_values, noisy.fact_values) and torch.equal(clean.keys, noisy.keys)
    off = (noisy.values - noisy.fact_values[:, noisy.fact]).norm(dim=-1)
    assert 0.3 < off.mean() < 0.7  # about value_noise


def test_shift_stream_phases_use_their_own_facts():
    s = shift_stream(n_phases=4, phase_length=10, facts_per_phase=3, dim=8, batch=2)
    assert s.length == 40 and s.groups == ("phase 1", "phase 2", "phase 3", "phase 4")
    phase = torch.arange(40) // 10
    assert torch.equal(s.token_group(), phase)
    assert torch.equal(s.feature.nonzero().flatten(), torch.tensor([10, 20, 30]))
    assert torch.equal(s.facts_in("phase 2"), torch.tensor([3, 4, 5]))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: event_stream(length=50, events=(60,)), "events must be distinct times"),
        (lambda: event_stream(length=50, events=(10, 10)), "events must be distinct times"),
        (lambda: event_stream(length=50, events=(10,), n_noise=100), "n_noise must be in"),
        (lambda: event_stream(length=0), "length must be a positive integer"),
        (lambda: episode_stream(length=50, start=45, episode_length=10), "must fit in the stream"),
        (lambda: episode_stream(value_noise=-1.0), "value_noise must be >= 0"),
        (lambda: shift_stream(n_phases=0), "n_phases must be a positive integer"),
    ],
)
def test_bad_arguments_say_what_to_do(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unknown_group_is_named_in_the_error():
    with pytest.raises(ValueError, match="fact groups"):
        shift_stream(n_phases=2, phase_length=4).facts_in("familiar")
