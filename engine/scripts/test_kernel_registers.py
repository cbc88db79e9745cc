#!/usr/bin/env python3
"""Unit tests of kernel_registers.py's ptxas parsing and occupancy arithmetic
on a captured `ptxas -v` fixture (testdata/ptxas_v_sm90.txt). No GPU, no
ptxas. From the repository root:

  python3 -m unittest discover -s engine/scripts -p 'test_kernel_registers.py'
"""
import os
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kernel_registers as kr  # noqa: E402


class ParsePtxas(unittest.TestCase):
    def test_every_kernel_with_registers_spills_and_shared_memory(self):
        with open(os.path.join(HERE, "testdata", "ptxas_v_sm90.txt")) as f:
            k = kr.parse_ptxas(f.read())
        self.assertEqual(sorted(k), ["attention", "norm_gate_up_silu", "silu_mul"])
        self.assertEqual(k["attention"], {"registers": 123, "spill_stores": 0, "spill_loads": 0,
                                          "smem": 12673})
        self.assertEqual((k["norm_gate_up_silu"]["spill_stores"],
                          k["norm_gate_up_silu"]["spill_loads"]), (16, 16))
        self.assertEqual(k["silu_mul"]["smem"], 0)

    def test_a_kernel_without_a_register_count_is_an_error(self):
        text = "ptxas info    : Compiling entry function 'attention' for 'sm_90'\n"
        with self.assertRaises(kr.ToolError):
            kr.parse_ptxas(text)


class BlocksPerSm(unittest.TestCase):
    def test_register_file_and_thread_limits(self):
        # Nsight Compute on the H200: 118 registers, 128 threads -> 4 blocks.
        self.assertEqual(kr.blocks_per_sm(118, 128), 4)
        self.assertEqual(kr.blocks_per_sm(96, 128), 5)
        self.assertEqual(kr.blocks_per_sm(64, 128), 8)
        # Few registers: the 2,048 threads of an SM are the limit.
        self.assertEqual(kr.blocks_per_sm(16, 128), 16)
        self.assertEqual(kr.blocks_per_sm(32, 512), 4)


class SameAsTheEngine(unittest.TestCase):
    def test_launch_constants_and_source_order_match_the_rust_side(self):
        src = os.path.join(HERE, "..", "src", "backend", "cuda")
        with open(os.path.join(src, "kernels.rs")) as f:
            kernels_rs = f.read()
        for name, value in list(kr.LAUNCH_CONSTANTS.items()) + [
                ("ATTN_MAX_GROUP_TILE", kr.ATTN_MAX_GROUP_TILE)]:
            self.assertIn(f"pub const {name}: usize = {value};", kernels_rs, name)
        with open(os.path.join(src, "nvrtc.rs")) as f:
            nvrtc_rs = f.read()
        order = re.findall(r'"(\w+\.cuh?)",\s*include_str!', nvrtc_rs)
        self.assertEqual(order, kr.SOURCES)

    def test_persistent_program_defines_match_persistent_rs(self):
        with open(os.path.join(HERE, "..", "src", "backend", "cuda", "persistent.rs")) as f:
            rs = f.read()
        names = re.findall(r'\("(\w+)", \|l\|', rs)
        self.assertGreater(len(names), 0)
        self.assertEqual([d for d in kr.PERSISTENT_DEFINES if d.startswith("LAYER_PTR_")],
                         [f"LAYER_PTR_{n}={i}" for i, n in enumerate(names)])
        self.assertIn(f"LAYER_PTRS={len(names)}", kr.PERSISTENT_DEFINES)
        blocks = re.search(r"pub const DEFAULT_BLOCKS_PER_SM: usize = (\d+);", rs).group(1)
        self.assertIn(f"PERSIST_MIN_BLOCKS={blocks}", kr.PERSISTENT_DEFINES)


class Defines(unittest.TestCase):
    def test_group_chunks_and_extra_defines(self):
        d = kr.defines([128, 16, 2048, 2048, 6144], ["ATTN_MIN_BLOCKS=5"])
        self.assertIn("-DDYNO_GROUP_CHUNKS=2", d)
        self.assertIn("-DATTN_MAX_SPLITS=32", d)
        self.assertEqual(d[-1], "-DATTN_MIN_BLOCKS=5")

    def test_the_engine_default_kv_layout_unless_one_is_named(self):
        d = kr.defines([64, 3, 576, 576, 1536], [])
        self.assertIn("-DKV_HEAD_MAJOR=2", d)
        self.assertIn("-DKV_BLOCK_SIZE=16", d)
        d = kr.defines([64, 3, 576, 576, 1536], ["KV_HEAD_MAJOR=0"])
        self.assertEqual([x for x in d if x.startswith("-DKV_HEAD_MAJOR")], ["-DKV_HEAD_MAJOR=0"])
        self.assertIn("-DKV_BLOCK_SIZE=16", d)

    def test_default_defines_match_the_engine_defaults(self):
        src = os.path.join(HERE, "..", "src")
        with open(os.path.join(src, "engine_config.rs")) as f:
            engine_config_rs = f.read()
        self.assertIn(f"block_size: {kr.DEFAULT_DEFINES['KV_BLOCK_SIZE']},", engine_config_rs)
        with open(os.path.join(src, "backend", "cuda", "kernels.rs")) as f:
            kernels_rs = f.read()
        mode = re.search(r"KvLayout::FollowAttention \{ block_size \} => \((\d+), block_size\)",
                         kernels_rs)
        self.assertIsNotNone(mode, "kernels.rs KvLayout::defines changed shape")
        self.assertEqual(int(mode.group(1)), kr.DEFAULT_DEFINES["KV_HEAD_MAJOR"])

if __name__ == "__main__":
    unittest.main()
