"""A bucket noted again replaces what the hop tracker kept of it (``auditor aggregate``: a
partition whose first lines came late changed a bucket already judged). Without it, a node's
public hop whose sidecar started after the others was undercounted for the whole window, and
two aggregators could disagree on it."""

from __future__ import annotations

from pipeline.core.addresses import Classifier, k3s_defaults
from pipeline.core.engine import EngineConfig
from pipeline.core.hops import HopTracker
from pipeline.core.traffic import Summary

HOP = "198.51.100.7"
CFG = EngineConfig()
START = 29_000_000  # a bucket number


def bucket(hop: int, others: int) -> Summary:
    """``hop`` requests from HOP over six sites and ``others`` from distinct public clients."""
    keys: dict[tuple[str, str, str, str, str, str, str], int] = {}
    for i in range(6):
        keys["web", HOP, f"s{i}.example", f"r{i}@k8s", "", "", f"UA {i}"] = hop // 6
    for i in range(others):
        keys["web", f"93.184.0.{i + 1}", f"s{i % 6}.example", f"r{i % 6}@k8s", "", "", ""] = 1
    s = Summary()
    s.add_counts(keys, Classifier(k3s_defaults()).classify)
    return s


def verdict(tracker: HopTracker) -> tuple[bool, int, int]:
    last = float((START + 10) * CFG.bucket_s)
    (v,) = [v for v in tracker.judge(last, tracker.window_total(last), keep_peak=False)]
    return v.suspected, v.requests, v.buckets


def test_a_bucket_noted_again_replaces_its_rows() -> None:
    tracker = HopTracker(CFG)
    tracker.note(START, bucket(hop=0, others=60))  # the hop's partition had sent nothing yet
    tracker.note(START + 1, bucket(hop=60, others=60))
    assert verdict(tracker) == (False, 60, 1)  # 60 of 180: a third, but only 60 requests
    tracker.note(START, bucket(hop=60, others=60))  # its snapshot arrives: the bucket again
    assert verdict(tracker) == (True, 120, 2)
    assert tracker.last_noted == START + 1


def test_noting_the_same_bucket_twice_counts_it_once() -> None:
    tracker = HopTracker(CFG)
    for _ in range(3):
        tracker.note(START, bucket(hop=120, others=60))
    assert verdict(tracker) == (True, 120, 1)
    assert tracker.window_total(float((START + 1) * CFG.bucket_s)) == 180


def test_an_older_bucket_goes_in_its_place_and_expires_in_order() -> None:
    tracker = HopTracker(CFG)
    tracker.note(START + 2, bucket(hop=60, others=60))
    tracker.note(START, bucket(hop=60, others=60))  # late: before the newest
    assert tracker.last_noted == START + 2
    window = CFG.window_s // CFG.bucket_s
    tracker.note(START + window + 1, bucket(hop=0, others=60))  # START falls out of the window
    assert verdict(tracker)[1] == 60  # only START + 2 is left


def test_replay_judges_only_an_address_that_is_or_was_suspected() -> None:
    """With ``keep_peak`` (replay, which judges at every closed bucket) an address kept but
    below the request thresholds gets no verdict unless it was suspected before: then its
    peak, where the live verdict would be."""
    tracker = HopTracker(CFG)

    def judge(newest: int, *, keep_peak: bool) -> list[tuple[str, bool, int]]:
        last = float((newest + 1) * CFG.bucket_s)
        verdicts = tracker.judge(last, tracker.window_total(last), keep_peak=keep_peak)
        return [(v.address, v.suspected, v.requests) for v in verdicts]

    tracker.note(START, bucket(hop=12, others=60))  # heavy in its bucket (kept), 12 requests
    assert judge(START, keep_peak=False) == [(HOP, False, 12)]
    assert judge(START, keep_peak=True) == []
    tracker.note(START + 1, bucket(hop=240, others=60))
    assert judge(START + 1, keep_peak=True) == [(HOP, True, 252)]
    window = CFG.window_s // CFG.bucket_s
    tracker.note(START + window + 1, bucket(hop=12, others=60))  # the busy minutes left
    assert judge(START + window + 1, keep_peak=False) == [(HOP, False, 12)]
    assert judge(START + window + 1, keep_peak=True) == [(HOP, True, 252)]


def test_note_returns_the_heavy_clients_drift_keeps() -> None:
    """``HopTracker.note`` hands drift the bucket's public clients with half of ``hop_share``
    of its requests, in order: what ``DriftTracker`` keeps of each bucket."""
    tracker = HopTracker(CFG)
    for i, (hop, others) in enumerate([(12, 60), (240, 60), (0, 60), (7, 60), (6, 0)]):
        s = bucket(hop=hop, others=others)
        floor = CFG.hop_share / 2 * s.total
        want = [(a, n) for a, n in s.pub_count.items() if n >= floor]
        assert list(tracker.note(START + i, s).items()) == want
    assert list(tracker.note(START + 9, Summary()).items()) == []
