"""Elastic restarts: the warning about torchrun's shared store."""

from lmforge.distributed.elastic import NO_SHARED_STORE, shared_store_warning


def test_warns_only_when_a_restart_could_read_the_last_groups_addresses():
    restarting_shared = {"TORCHELASTIC_MAX_RESTARTS": "3", "TORCHELASTIC_USE_AGENT_STORE": "True"}
    warning = shared_store_warning(restarting_shared)
    assert warning and f"{NO_SHARED_STORE}=1" in warning and "--max-restarts=3" in warning
    # no restarts, sharing off, or not under torchrun: nothing to say
    assert shared_store_warning({**restarting_shared, "TORCHELASTIC_MAX_RESTARTS": "0"}) is None
    assert shared_store_warning({**restarting_shared, "TORCHELASTIC_USE_AGENT_STORE": "False"}) is None
    assert shared_store_warning({}) is None
