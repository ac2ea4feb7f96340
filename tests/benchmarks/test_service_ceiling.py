"""benchmarks/service_ceiling.py: how py-spy's samples are put in stages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from service_ceiling import stage_shares

MAIN = "<module> (benchmarks/service_ceiling.py:1);serve_instant (benchmarks/service_ceiling.py:2)"
FINISH = f"{MAIN};MonitorService.cycle (monitor/service.py:3);MonitorService._finish (monitor/service.py:4)"
RAW = "\n".join(
    [
        # The main thread publishing a score, then waiting for the flush: both publish.
        f"{FINISH};MonitorService._publish (monitor/service.py:5);"
        "Publisher.scores (monitor/publishing.py:6);encode (monitor/wire.py:7) 3",
        f"{FINISH};Publisher.flush (monitor/publishing.py:8);"
        "FutureProduceResult.wait (kafka/producer/future.py:9) 1",
        # The commit: what _finish does beside publishing.
        f"{FINISH};KafkaConsumer.commit (kafka/consumer/group.py:10) 2",
        # A decode thread, and the same thread idle in the pool's queue (a wait: not CPU).
        "Thread._bootstrap (threading.py:1);_worker (concurrent/futures/thread.py:2);"
        "Intake._decode (monitor/intake.py:3);decode_frame (monitor/frames.py:4) 4",
        "Thread._bootstrap (threading.py:1);_worker (concurrent/futures/thread.py:2) 10",
    ]
)


def test_samples_go_to_the_stage_of_their_innermost_named_frame_and_waits_are_not_cpu() -> None:
    cpu, main, samples = stage_shares(RAW)
    assert samples == 6  # the main thread's: 3 + 1 + 2
    assert main["publish"] == pytest.approx(4 / 6) and main["commit"] == pytest.approx(2 / 6)
    # CPU: the flush's wait and the idle pool thread are left out; the decode thread counts.
    assert cpu == pytest.approx(
        {
            "poll": 0,
            "decode": 4 / 9,
            "pair": 0,
            "model": 0,
            "state": 0,
            "publish": 3 / 9,
            "commit": 2 / 9,
            "other": 0,
        }
    )
