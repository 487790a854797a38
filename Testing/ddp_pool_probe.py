"""One rank of a data-parallel phantom-pool generation (Testing/test_distributed.py).

Run under torch's launcher (or alone, as the one-process reference): generates a
tiny phantom pool as ``cac train --phantom-pool`` does and writes, for its rank, the
patients it generated itself and a digest of every array and name of the pool.
"""

import hashlib
import json
import sys
from pathlib import Path

from CACTrainerLib import distributed, phantom_pool


def main(out: str) -> None:
    ctx = distributed.init("cpu")
    made = []
    one = phantom_pool._one

    def counted(job):
        made.append(int(job[1]))
        return one(job)

    phantom_pool._one = counted  # workers=1: generated in this process
    fs = phantom_pool.phantom_pool(3, seed=7, n_frames=24, frames_per_acquisition=2, size=128, workers=1)
    digest = hashlib.sha256()
    for name in fs.array_fields():
        arr = getattr(fs, name)
        digest.update(f"{name}{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes())
    digest.update(json.dumps([fs.acquisition, fs.patient]).encode())
    rank = 0 if ctx is None else ctx.rank
    Path(out, f"pool_rank{rank}.json").write_text(json.dumps({"made": made, "digest": digest.hexdigest(),
                                                             "frames": len(fs)}))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
