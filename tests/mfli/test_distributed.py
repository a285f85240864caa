"""Data-parallel training: shard arithmetic, and 2 DDP steps on 2 gloo CPU processes launched with
torchrun, compared across ranks and with a single process on the same global batch."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mfli.distributed import shard_bounds

# 2 steps; the codebook switches layer 0 on after step 1 (k-means over the gathered buffer) and is
# used in step 2's loss, so the codebook syncing is part of what is compared
CFG = {"batch_size": 32, "epochs": 1, "max_steps": 2, "valid_frac": 0.0, "progress": False, "seed": 3,
       "model": {"hidden": 32, "dim": 16, "id_dropout": 0.0,
                 "codebook": {"codes": 4, "start_step": 1, "layer_interval": 1}}}  # fmt: skip

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    from safetensors.torch import save_file
    from mfli.data.loaders import load_dataset
    from mfli.distributed import current
    from mfli.train import TrainConfig, train

    data, cfg_path, out = sys.argv[1:4]
    ds = load_dataset(data)
    model = train(ds, ds.interactions, TrainConfig.from_dict(json.loads(open(cfg_path).read())))
    info = current()
    state = {k: v.detach().contiguous() for k, v in model.model.state_dict().items()}
    save_file(state, f"{out}/rank{info.rank}.safetensors")
    json.dump({"world": info.world, "active": model.model.rq.n_active}, open(f"{out}/rank{info.rank}.json", "w"))
    """
)


def test_shard_bounds_cover_rows_once():
    for n in (0, 1, 7, 32, 33):
        for world in (1, 2, 3):
            bounds = [shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_two_ranks_match_each_other_and_single_process(tiny_dataset, tmp_path):
    from safetensors.torch import load_file

    from mfli.data.parquet_format import write_dataset
    from mfli.train import TrainConfig, train

    data = write_dataset(tiny_dataset, tmp_path / "data")
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "worker.py"), str(data), str(tmp_path / "cfg.json"), str(tmp_path)]  # fmt: skip
    run = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == {"world": 2, "active": 2}

    # replicas: bit-identical (DDP averages the same gradients; codebook k-means broadcast from rank 0)
    assert ranks[0].keys() == ranks[1].keys()
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k

    # one process, same seed and global batch cut into the same 2 shards, losses averaged
    single = train(tiny_dataset, tiny_dataset.interactions, TrainConfig.from_dict({**CFG, "batch_shards": 2}))
    ref = single.model.state_dict()
    start = train(tiny_dataset, tiny_dataset.interactions, TrainConfig.from_dict({**CFG, "max_steps": 0}))
    moved = 0.0
    for k, v in ref.items():
        # float32 gradients summed in a different order (gloo all-reduce vs autograd accumulation)
        torch.testing.assert_close(ranks[0][k], v, rtol=1e-4, atol=1e-5, msg=k)
        if v.is_floating_point():
            moved = max(moved, float((v - start.model.state_dict()[k]).abs().max()))
    assert moved > 1e-3  # the 2 steps really changed the weights (Adam, lr 3e-3)
