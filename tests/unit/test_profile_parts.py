"""Profile parts that need no model: the head cost, the host check, the recipe filter of a sweep."""

from __future__ import annotations

import numpy as np

from edgekit.runtime.heads import KnnHead
from edgekit.targets import get_target, host_mismatch


def test_head_cost_is_dominated_by_the_distance_product():
    bank = np.random.default_rng(0).normal(size=(1000, 64)).astype(np.float32)
    head = KnnHead(memory_bank=bank, num_neighbors=9, output_height=256, output_width=256)
    flops, moved = head.cost(32, 32)
    distance_product = 2 * 32 * 32 * 1000 * 64
    assert distance_product < flops < 1.3 * distance_product
    assert moved >= bank.nbytes


def test_host_check_reads_the_machine_and_the_arm_cpu_part():
    a72 = "processor\t: 0\nCPU part\t: 0xd08\n"
    assert host_mismatch(get_target("rpi4"), machine="aarch64", cpuinfo=a72) is None
    assert "0xd08, not rpi5's 0xd0b" in host_mismatch(get_target("rpi5"), machine="aarch64", cpuinfo=a72)
    assert host_mismatch(get_target("rpi5"), machine="aarch64", cpuinfo="") is None  # no part listed: trusted
    assert "not x86's" in host_mismatch(get_target("x86"), machine="aarch64")
