"""Forward + backward time of a small nnU-Net 2d network (the demo's plans: 5 stages 32-512, batch 4, 64 x 64)
with 1 and 2 torch threads. Run it twice, once as is and once with OMP_WAIT_POLICY=PASSIVE, beside another
job (e.g. a training) to see what spinning OpenMP threads cost on a small CPU:

    python scripts/benchmark_omp_wait.py
    OMP_WAIT_POLICY=PASSIVE python scripts/benchmark_omp_wait.py
"""
import os
import time

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet


def seconds_per_step(net: torch.nn.Module, threads: int, batch: int = 4, size: int = 64, steps: int = 5) -> float:
    torch.set_num_threads(threads)
    x = torch.randn(batch, 1, size, size)
    net(x)[0].sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        net(x)[0].sum().backward()
    return (time.perf_counter() - start) / steps


def main() -> None:
    net = PlainConvUNet(1, 5, [32, 64, 128, 256, 512], torch.nn.Conv2d, 3, [1, 2, 2, 2, 2], 2, 4, 2, True,
                        torch.nn.InstanceNorm2d, {"affine": True}, None, None, torch.nn.LeakyReLU, {"inplace": True},
                        deep_supervision=True)
    policy = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    for threads in (1, 2):
        print(f"OMP_WAIT_POLICY={policy} threads={threads}: {seconds_per_step(net, threads):.3f} s per "
              f"forward/backward", flush=True)


if __name__ == "__main__":
    main()
