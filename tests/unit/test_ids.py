"""Request ids and leases are unique across calls and across forked workers."""

from __future__ import annotations

import os

from tokenrelay.ids import unique


def test_each_call_gives_a_new_id_of_the_same_shape() -> None:
    ids = [unique("req") for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.startswith("req_") and len(i) == 28 for i in ids)
    int(ids[0].removeprefix("req_"), 16)


def test_a_forked_worker_draws_its_own_prefix() -> None:
    mine = unique("lease")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id and leave without cleanup
        os.write(write, unique("lease").encode())
        os._exit(0)
    os.close(write)
    theirs = os.read(read, 100).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert theirs.startswith("lease_") and theirs != mine
    # Not the same counter under another prefix: the random part itself differs.
    assert theirs[6:18] != mine[6:18]
