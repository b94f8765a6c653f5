"""Two or more threads attributing with the same model get the serial results, and the
model is restored, even when some of the concurrent calls fail."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from helpers import PaddedEncoder, assert_unchanged, snapshot, tiny_bert

from captum_attnflow import AttentionFlow, AttentionRollout, AttnFlowError, RawAttention

WORKERS = 4


def _requests(num_requests=12, vocab_size=50, seed=0):
    """Batches of different lengths and padding, so a mixed-up capture cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    requests = []
    for k in range(num_requests):
        batch_size, seq_len = 1 + k % 3, 3 + k % 5
        ids = torch.randint(1, vocab_size, (batch_size, seq_len), generator=generator)
        mask = torch.ones(batch_size, seq_len, dtype=torch.long)
        mask[-1, seq_len - k % 2:] = 0
        requests.append((ids, mask))
    return requests


def _run_all(explainer_for, requests, workers):
    def one(request):
        ids, mask = request
        return explainer_for(ids).attribute(ids, additional_forward_args=(mask,))

    if workers == 1:
        return [one(r) for r in requests]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, requests))


@pytest.mark.parametrize("method", [AttentionRollout, AttentionFlow, RawAttention], ids=lambda m: m.__name__)
@pytest.mark.parametrize("shared_explainer", [True, False], ids=["shared-explainer", "explainer-per-call"])
def test_concurrent_results_equal_serial_results(method, shared_explainer):
    model = tiny_bert()  # SDPA: every capture switches to eager and back
    before = snapshot(model)
    shared = method(model)
    explainer_for = (lambda ids: shared) if shared_explainer else (lambda ids: method(model))
    requests = _requests()
    serial = _run_all(explainer_for, requests, workers=1)
    for _ in range(3):
        concurrent = _run_all(explainer_for, requests, workers=WORKERS)
        for expected, got in zip(serial, concurrent):
            assert torch.equal(got, expected)
    assert_unchanged(model, before)


def test_shared_explainer_keeps_each_calls_padding_mask():
    # Each call's mask is adapter state; it must not leak into a concurrent call.
    model = PaddedEncoder().eval()
    before = snapshot(model)
    explainer = AttentionRollout(model)
    requests = _requests(num_requests=16)
    serial = _run_all(lambda ids: explainer, requests, workers=1)
    for _ in range(3):
        for expected, got in zip(serial, _run_all(lambda ids: explainer, requests, workers=WORKERS)):
            assert torch.equal(got, expected)
    assert_unchanged(model, before)


def test_failing_calls_among_concurrent_ones_leave_the_model_restored():
    model = tiny_bert()
    before = snapshot(model)
    explainer = AttentionFlow(model)
    good = _requests(num_requests=8)
    serial = _run_all(lambda ids: explainer, good, workers=1)

    def one(k):
        ids, mask = good[k % len(good)]
        if k % 3 == 1:  # fails inside the model: longer than its 32 positions
            ids, mask = torch.ones(1, 40, dtype=torch.long), torch.ones(1, 40, dtype=torch.long)
        if k % 3 == 2:  # refused by validation after the forward pass
            return explainer.attribute(ids, additional_forward_args=(mask,), layer=7)
        return explainer.attribute(ids, additional_forward_args=(mask,))

    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(one, k) for k in range(24)]
    for k, future in enumerate(futures):
        if k % 3 == 0:
            assert torch.equal(future.result(), serial[k % len(good)])
        elif k % 3 == 1:
            assert not isinstance(future.exception(), AttnFlowError) and future.exception() is not None
        else:
            assert isinstance(future.exception(), AttnFlowError)
    assert_unchanged(model, before)


def test_captures_of_the_same_model_never_overlap():
    # Serialisation itself, not only its effect: a forward function that notices company.
    import threading
    import time

    model = tiny_bert()
    before = snapshot(model)
    inside, overlaps, lock = [0], [], threading.Lock()

    def forward(ids, attention_mask):
        with lock:
            inside[0] += 1
            overlaps.append(inside[0])
        time.sleep(0.002)  # widen the window in which another capture could start
        try:
            return model(ids, attention_mask=attention_mask)
        finally:
            with lock:
                inside[0] -= 1

    explainers = {method: method(forward, model=model) for method in (AttentionRollout, AttentionFlow, RawAttention)}
    requests = _requests(num_requests=8)
    jobs = [(method, request) for method in explainers for request in requests]
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda job: explainers[job[0]].attribute(job[1][0], additional_forward_args=(job[1][1],)), jobs))
    assert len(overlaps) == len(jobs) and max(overlaps) == 1
    assert_unchanged(model, before)
