"""How much a Ray task costs on this machine: one model trained in-process, in one Ray task, and two in parallel.

``python scripts/split_data_ray_check.py`` (the --quick split-data model: VGG11-BN width 1/16 on 2,000 mnist5k
images, 2 epochs, one torch thread per model). Prints the wall-clock seconds of each; see docs/RESULTS.md,
"Split-data training".
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from intrafusion.experiments import split_data as sd  # noqa: E402
from intrafusion.experiments.train_zoo import zoo_arch_config  # noqa: E402
from intrafusion.models.architectures import build_model  # noqa: E402
from intrafusion.parallel import map_tasks, shutdown  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    cfg = sd.quick_config("vgg11_bn", "mnist5k", 2).check()
    run = sd._Run(cfg, None, None, False)
    conf = zoo_arch_config("vgg11_bn", cfg.width, "mnist5k")

    def item(part: int) -> dict:
        torch.manual_seed(part)
        return dict(model=build_model(conf), part=part, epochs=2, lr=0.05, seed=1)

    sd._train_task(dict(item(0), epochs=1), run.shared)  # first-call costs out of the way
    t = time.perf_counter()
    sd._train_task(item(0), run.shared)
    print(f"in-process, one model: {time.perf_counter() - t:.1f} s")
    list(map_tasks(sd._warm_task, range(2), workers=2, threads=1))  # Ray and its two workers started
    t = time.perf_counter()
    out = list(map_tasks(sd._train_task, [item(0)], workers=2, shared=run.shared, threads=1))
    print(f"one Ray task: {time.perf_counter() - t:.1f} s wall ({out[0]['seconds']:.1f} s inside the task)")
    t = time.perf_counter()
    out = list(map_tasks(sd._train_task, [item(0), item(1)], workers=2, shared=run.shared, threads=1))
    inside = ", ".join(f"{o['seconds']:.1f}" for o in out)
    print(f"two Ray tasks at once: {time.perf_counter() - t:.1f} s wall ({inside} s inside the tasks)")
    shutdown()


if __name__ == "__main__":
    main()
