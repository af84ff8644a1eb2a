"""The Ray backend: the same numbers as the local run, and a resume after a killed worker.

One local Ray instance (2 CPUs) for the module; the audit is test_shards.py's small one.
Starting Ray and its actors is slow (measured on an idle 2-core AMD EPYC: ray.init 8 s, the
test 53 s; under heavy load 23 s and 130 s), yet it fits the suite's budget, so it runs in
every run where Ray is installed (``SCRUTINY_RAY_TESTS=0`` leaves it out); the local
backend's sharding and resume are tested by test_shards.py.
"""

import os

import pytest

from scrutiny.audit import AuditConfig, run_audit, shards
from tests.audit.test_shards import CFG, SIZE, numbers

pytestmark = pytest.mark.skipif(os.environ.get("SCRUTINY_RAY_TESTS") == "0",
                                reason="SCRUTINY_RAY_TESTS=0 leaves the Ray tests out")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                 log_to_driver=False, configure_logging=False)
    except Exception as e:  # a machine where a local Ray cannot start (shared memory, ports)
        pytest.skip(f"a local Ray instance did not start here: {type(e).__name__}: {e}")
    yield
    ray.shutdown()


class Recording(shards.RayBackend):
    """The Ray backend, recording the shards it is given and, with ``kill``, killing every
    worker once the first shard came back (the driver saved it; the others are lost)."""

    def __init__(self, kill=False):
        super().__init__(workers=2)
        self.todo, self.kill = [], kill

    def run(self, ctx, names, todo):
        self.todo = list(todo)
        for i, item in enumerate(super().run(ctx, names, todo)):
            yield item
            if self.kill and i == 0:
                for actor in self.actors:
                    ray.kill(actor)


def test_ray_gives_the_local_numbers_and_resumes_after_a_killed_worker(
        cluster, digits_model, digits_test, tmp_path):
    local = run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
                      shard_size=SIZE)
    remote = run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
                       shard_size=SIZE, backend=Recording())
    assert numbers(remote) == numbers(local)  # robust accuracies, certificates, everything
    for name in ("robust", "x_adv"):
        assert remote.sections["headline"].tensors[name].equal(
            local.sections["headline"].tensors[name])
    assert remote.sections["certification"].tensors["certified"].equal(
        local.sections["certification"].tensors["certified"])

    killer = Recording(kill=True)
    with pytest.raises(ray.exceptions.RayError):
        run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
                  shard_size=SIZE, state_dir=tmp_path, backend=killer)
    saved = sorted(tmp_path.glob("shard*.json"))
    assert 1 <= len(saved) < 3
    again = Recording()
    resumed = run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
                        shard_size=SIZE, state_dir=tmp_path, backend=again)
    assert len(again.todo) == 3 - len(saved)  # the finished shards were not recomputed
    assert numbers(resumed) == numbers(local)
