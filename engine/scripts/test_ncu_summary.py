#!/usr/bin/env python3
"""Unit tests of ncu_summary.py on a hand-written `ncu --csv --page raw`
fixture (testdata/ncu_raw_decode.csv: two decode steps, a cuBLAS GEMM and a
GEMV among the engine's kernels). No GPU. Run from the repository root:

  python3 -m unittest discover -s engine/scripts -p 'test_ncu_summary.py'
"""
import contextlib
import io
import json
import os
import struct
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import ncu_summary as ns  # noqa: E402

FIXTURE = os.path.join(HERE, "testdata", "ncu_raw_decode.csv")
KERNELS_DIR = os.path.join(HERE, "..", "kernels")
NS = 1e-9


def write_safetensors(path, tensors):
    """A safetensors file of zero-filled bf16 tensors {name: shape}."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def write_model(d, untied):
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "hidden_size": 64}, f)
    tensors = {"model.embed_tokens.weight": [10, 4], "model.layers.0.mlp.down_proj.weight": [4, 8],
               "model.norm.weight": [4]}
    if untied:
        tensors["lm_head.weight"] = [10, 4]
    write_safetensors(os.path.join(d, "model.safetensors"), tensors)


def fixture_text():
    with open(FIXTURE, encoding="utf-8") as f:
        return f.read()


class ReadRawCsv(unittest.TestCase):
    def test_reads_every_launch_in_base_units(self):
        launches = ns.read_raw_csv(FIXTURE)
        self.assertEqual(len(launches), 11)
        first = launches[0]
        self.assertEqual(first.kernel, "norm_qkv_rope_cache")
        self.assertAlmostEqual(first.duration_s, 1000 * NS)
        self.assertEqual((first.dram_read, first.dram_write), (1_000_000, 10_000))
        self.assertEqual((first.dram_pct, first.sm_pct), (30.0, 10.0))

    def test_converts_other_units(self):
        text = ('"ID","Kernel Name","dram__bytes_read.sum","dram__bytes_write.sum",'
                '"dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum",'
                '"sm__throughput.avg.pct_of_peak_sustained_elapsed"\n'
                '"","","Kbyte","Mbyte","%","usecond","%"\n'
                '"0","k","1.5","2","10","3.25","20"\n')
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "raw.csv")
            with open(path, "w") as f:
                f.write(text)
            (launch,) = ns.read_raw_csv(path)
        self.assertAlmostEqual(launch.dram_read, 1500)
        self.assertAlmostEqual(launch.dram_write, 2e6)
        self.assertAlmostEqual(launch.duration_s, 3.25e-6)

    def test_bad_input_names_file_line_and_field(self):
        cases = {
            "no header": ("==PROF== No kernels were profiled.\n", "no header row"),
            "missing metric": ('"ID","Kernel Name","gpu__time_duration.sum"\n"","","nsecond"\n',
                               "missing metric column"),
            "unknown unit": (fixture_text().replace('"nsecond"', '"fortnight"'),
                             "raw.csv:3: gpu__time_duration.sum: unit 'fortnight'"),
            "not a number": (fixture_text().replace('"5,000","50.00"', '"n/a","50.00"', 1),
                             "raw.csv:8: gpu__time_duration.sum: 'n/a'"),
        }
        for what, (text, expected) in cases.items():
            with self.subTest(what), tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "raw.csv")
                with open(path, "w") as f:
                    f.write(text)
                with self.assertRaises(ns.InputError) as cm:
                    ns.read_raw_csv(path)
                self.assertIn(expected, str(cm.exception))


class Grouping(unittest.TestCase):
    def setUp(self):
        self.own = ns.own_kernel_names(KERNELS_DIR)
        self.groups = {g.name: g for g in ns.group_launches(ns.read_raw_csv(FIXTURE), self.own)}

    def test_engine_kernel_names_come_from_the_sources(self):
        # Plain and __launch_bounds__ declarations alike.
        for name in ["attention", "sample_rows", "norm_qkv_rope_cache", "add_rmsnorm", "silu_mul"]:
            self.assertIn(name, self.own)

    def test_cublas_kernels_form_one_group_and_the_engine_kernels_keep_their_names(self):
        self.assertEqual(set(self.groups), {"cublas gemm", "sample_rows", "attention",
                                            "norm_qkv_rope_cache", "o_proj_residual"})
        self.assertEqual(self.groups["cublas gemm"].kernels,
                         {"nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "gemv2T_kernel_val"})
        self.assertEqual(ns.group_name("some_other_library_kernel", self.own),
                         "some_other_library_kernel")

    def test_totals_and_bandwidth(self):
        gemm = self.groups["cublas gemm"]
        self.assertEqual(gemm.launches, 3)
        self.assertAlmostEqual(gemm.duration_s, 5000 * NS)
        self.assertEqual(gemm.dram_bytes, 7_000_000)
        self.assertAlmostEqual(gemm.bytes_per_s() / 1.4e12, 1.0)
        # ncu's percentages are weighted by duration: (70·1 + 30·3 + 50·1) / 5.
        self.assertAlmostEqual(gemm.dram_pct(), 42.0)
        self.assertAlmostEqual(gemm.sm_pct(), 40.0)
        self.assertEqual(self.groups["sample_rows"].dram_bytes, 200_016)
        self.assertAlmostEqual(self.groups["attention"].bytes_per_s() / 1e11, 1.0)

    def test_groups_are_ordered_by_time(self):
        order = [g.name for g in ns.group_launches(ns.read_raw_csv(FIXTURE), self.own)]
        self.assertEqual(order, ["sample_rows", "cublas gemm", "attention",
                                 "norm_qkv_rope_cache", "o_proj_residual"])


def gemm_csv(rows):
    """A raw export of (kernel, grid, duration ns, DRAM bytes read) launches."""
    lines = ['"ID","Kernel Name","Grid Size","dram__bytes_read.sum","dram__bytes_write.sum",'
             '"dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum",'
             '"sm__throughput.avg.pct_of_peak_sustained_elapsed"',
             '"","","","byte","byte","%","nsecond","%"']
    for i, (kernel, grid, ns_, read) in enumerate(rows):
        lines.append(f'"{i}","{kernel}","{grid}","{read}","0","10","{ns_}","10"')
    return "\n".join(lines) + "\n"


class ProductsByPlace(unittest.TestCase):
    def launches(self, rows):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "raw.csv")
            with open(path, "w") as f:
                f.write(gemm_csv(rows))
            return ns.read_raw_csv(path)

    def two_layer_step(self, o_kernel="nvjet_o", o_grid="(18, 1, 1)"):
        """One decode step of 2 layers: QKV, attention, O, gate/up, down per
        layer, then the LM head and sampling."""
        rows = []
        for layer in range(2):
            rows += [("nvjet_qkv", "(120, 1, 1)", 1000, 1000),
                     ("attention", "(3, 1, 32)", 9000, 0),
                     (o_kernel, o_grid, 2000 + 1000 * layer, 2000),
                     ("nvjet_gate_up", "(2, 66, 1)", 3000, 3000),
                     ("nvjet_down", "(128, 1, 1)", 4000, 4000)]
        return rows + [("nvjet_lm_head", "(132, 1, 1)", 5000, 5000),
                       ("sample_rows", "(1, 1, 1)", 100, 0)]

    def test_each_layer_product_is_summed_over_the_layers(self):
        own = ns.own_kernel_names(KERNELS_DIR)
        places, why = ns.products_by_place(self.launches(self.two_layer_step()), own, 1, 2)
        self.assertIsNone(why)
        self.assertEqual([p.name for p in places], ["QKV", "O", "gate/up", "down", "LM head"])
        o = places[1]
        self.assertEqual(o.launches, 2)
        self.assertAlmostEqual(o.duration_s, 5000 * NS)
        self.assertEqual(o.kernel_blocks, {("nvjet_o", 18): 2})
        self.assertEqual(places[2].kernel_blocks, {("nvjet_gate_up", 132): 2})
        self.assertEqual((places[4].launches, places[4].kernel_blocks),
                         (1, {("nvjet_lm_head", 132): 1}))

    def test_the_summary_shows_the_places_with_kernels_and_blocks(self):
        own = ns.own_kernel_names(KERNELS_DIR)
        text = ns.summarize(self.launches(self.two_layer_step()), steps=1, batch=1, context=1,
                            weight_bytes=1000, kv_token_bytes=1, step_times=[], own=own,
                            title="t", layers=2)
        # O: 2 launches, 5 µs per step, 2.5 µs each, 4,000 B / 5 µs = 0.8 GB/s.
        self.assertIn("| O | 2 | 5.0 | 2.5 | 1 | `nvjet_o` (18) × 2 |", text)
        self.assertIn("| LM head | 1 | 5.0 | 5.0 | 1 | `nvjet_lm_head` (132) × 1 |", text)

    def test_launches_that_do_not_split_are_said_so(self):
        own = ns.own_kernel_names(KERNELS_DIR)
        launches = self.launches(self.two_layer_step())
        # 9 cuBLAS launches are not 3 layers × k + 1, nor 2 steps' worth.
        self.assertIn("not 3 layers", ns.products_by_place(launches, own, 1, 3)[1])
        self.assertIn("do not divide into 2 steps", ns.products_by_place(launches, own, 2, 2)[1])
        for bad in (None, "x", 0, True):
            self.assertIn(f"num_hidden_layers {bad!r} is not a layer count",
                          ns.products_by_place(launches, own, 1, bad)[1])
        text = ns.summarize(launches, steps=1, batch=1, context=1, weight_bytes=1000,
                            kv_token_bytes=1, step_times=[], own=own, title="t", layers=3)
        self.assertIn("cuBLAS launches by product: not split (9 cuBLAS launches per step are "
                      "not 3 layers", text)

    def test_a_small_batch_step_has_only_the_lm_head(self):
        own = ns.own_kernel_names(KERNELS_DIR)
        launches = self.launches([("norm_qkv_rope_cache", "(8, 1, 1)", 100, 0),
                                  ("nvjet_lm_head", "(132, 1, 1)", 5000, 5000)])
        places, _ = ns.products_by_place(launches, own, 1, 30)
        self.assertEqual([p.name for p in places], ["LM head"])

    def test_a_bad_grid_names_the_file_line_and_field(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "raw.csv")
            with open(path, "w") as f:
                f.write(gemm_csv([("k", "(1, x, 1)", 1, 1)]))
            with self.assertRaises(ns.InputError) as e:
                ns.read_raw_csv(path)
        self.assertIn("raw.csv:3: Grid Size: '(1, x, 1)'", str(e.exception))

    def test_the_fixture_reads_its_grids(self):
        launches = ns.read_raw_csv(FIXTURE)
        self.assertEqual([launch.blocks for launch in launches[:3]], [120, 96, 576])


class Floors(unittest.TestCase):
    def test_weight_bytes_count_a_tied_embedding_once_and_skip_an_untied_one(self):
        for untied in (False, True):
            with self.subTest(untied=untied), tempfile.TemporaryDirectory() as d:
                write_model(d, untied)
                # 40 + 32 + 4 elements read either way, bf16.
                self.assertEqual(ns.weight_bytes_per_step(d), 76 * 2)

    def test_kv_bytes_per_token(self):
        # layers 2 × (K, V) × 2 kv heads × head_dim 64/4 × 2 bytes.
        self.assertEqual(ns.kv_bytes_per_token({"num_hidden_layers": 2, "num_attention_heads": 4,
                                                "num_key_value_heads": 2, "hidden_size": 64}),
                         256)
        self.assertEqual(ns.kv_bytes_per_token({"num_hidden_layers": 1, "num_attention_heads": 4,
                                                "num_key_value_heads": 1, "hidden_size": 64,
                                                "head_dim": 128}), 512)


    def test_a_kv_pool_too_large_to_replay_is_refused_with_the_way_out(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump({"num_hidden_layers": 28, "num_attention_heads": 16,
                           "num_key_value_heads": 8, "head_dim": 128, "hidden_size": 1024}, f)
            # 112 KiB a token: 1,000 blocks of 16 tokens are 1.7 GiB.
            self.assertIsNone(ns.replay_pool_problem(d, 1000, 16, 16))
            why = ns.replay_pool_problem(d, 50_000, 16, 16)
            self.assertIn("85.4 GiB (50000 blocks of 16 tokens)", why)
            self.assertIn("DYNO_PROFILE_MAX_POOL_GIB=16", why)
            self.assertIn("smaller batch", why)
            self.assertIsNone(ns.replay_pool_problem(d, 50_000, 16, 100))
            with self.assertRaises(ns.InputError):
                ns.replay_pool_problem(os.path.join(d, "missing"), 1, 16, 16)


class StepTimes(unittest.TestCase):
    def write_log(self, d):
        steps = [{"prefill_tokens": 128, "decode_tokens": 0, "batch_size": 1, "duration_s": 9e-3}]
        for i, us in enumerate([50, 40, 30, 31, 35, 60]):
            steps.append({"prefill_tokens": 0, "decode_tokens": 1, "batch_size": 1,
                          "duration_s": us * 1e-6})
            if i == 2:  # a mixed step: not a decode step, not counted
                steps.append({"prefill_tokens": 7, "decode_tokens": 1, "batch_size": 2,
                              "duration_s": 1.0})
        path = os.path.join(d, "run.steps.jsonl")
        with open(path, "w") as f:
            f.write("".join(json.dumps(s) + "\n" for s in steps))
        return path

    def test_window_selects_pure_decode_steps_by_ordinal(self):
        with tempfile.TemporaryDirectory() as d:
            times = ns.decode_step_times(self.write_log(d), 1, (2, 3))
        self.assertEqual([round(t * 1e6) for t in times], [30, 31, 35])

    def test_summary_table_arithmetic(self):
        with tempfile.TemporaryDirectory() as d:
            write_model(d, untied=False)
            launches = ns.read_raw_csv(FIXTURE)
            times = ns.decode_step_times(self.write_log(d), 1, (2, 3))
            text = ns.summarize(launches, steps=2, batch=1, context=100,
                                weight_bytes=ns.weight_bytes_per_step(d),
                                kv_token_bytes=256,
                                step_times=[ns.StepTime("graphs", times)],
                                own=ns.own_kernel_names(KERNELS_DIR), title="fixture")
        # Kernels: (10,000 + 13,000 ns) / 2 steps; median step 31 µs.
        self.assertIn("| sum of kernel durations (ncu) | 0.0115 ms |", text)
        self.assertIn("| measured step time, graphs (median; min 0.0300 ms, max 0.0350 ms, "
                      "n = 3) | 0.0310 ms |", text)
        # 31 − 11.5 µs between kernels, 62.9 % of the step.
        self.assertIn("| 0.0195 ms (62.9 % of the step) |", text)
        # Floor: (152 B of weights + 1 × 100 × 256 B of KV) / 4.3 TB/s.
        floor_s = (152 + 25_600) / ns.ACHIEVABLE_DRAM_BYTES_PER_S
        self.assertIn(f"floor {floor_s * 1e3:.4f} ms vs measured 0.0310 ms "
                      f"({31e-6 / floor_s:.1f}× the floor)", text)
        # cuBLAS row: 1.5 launches, 2.5 µs, 3.5 MB per step; 1,400 GB/s =
        # 32.6 % of 4.3 TB/s; ncu's DRAM 42.0 %, SM 40.0 %.
        self.assertIn("| cublas gemm | 1.5 | 2.5 | 21.7 | 3.50 | 1,400 | 32.6 | 42.0 | 40.0 |",
                      text)
        # All kernels: 5,310,008 B per step over 11.5 µs = 462 GB/s.
        self.assertIn("| **all kernels** | 5.5 | 11.5 | 100.0 | 5.31 | 462 | 10.7 | | |", text)
        self.assertNotIn("warning", text)

    def test_a_window_of_the_wrong_size_is_flagged(self):
        text = ns.summarize(ns.read_raw_csv(FIXTURE), steps=3, batch=1, context=1,
                            weight_bytes=1000, kv_token_bytes=1, step_times=[], own=set(),
                            title="t")
        self.assertIn("`sample_rows` (one launch per step) ran 2 times, not 3", text)


class GraphBuckets(unittest.TestCase):
    LOG = (
        "856 records (0 rejected), 50504 output tokens in 2.1 s over 86 steps\n"
        "cuda: decode graph bucket 256: 4 steps; GPU idle 1 µs (1 … 2) a step\n"
        "cuda: decode graph bucket 512: 9 steps; GPU idle 1 µs (1 … 4) a step\n"
        "cuda: decode graph bucket 1024: 40 steps; GPU idle 1 µs (1 … 5) a step\n"
    )

    def write(self, d, text, name="graphs-1.log"):
        path = os.path.join(d, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_the_smallest_bucket_that_ran_and_holds_the_batch(self):
        with tempfile.TemporaryDirectory() as d:
            path = self.write(d, self.LOG)
            self.assertEqual(ns.graph_bucket(path, 856), 1024)
            self.assertEqual(ns.graph_bucket(path, 512), 512)
            self.assertEqual(ns.graph_bucket(path, 300), 512)
            self.assertIsNone(ns.graph_bucket(path, 2000))
            self.assertIsNone(ns.graph_bucket(self.write(d, "no graphs\n", "eager.log"), 1))

    def test_the_summary_names_the_padded_rows(self):
        def text(rows, batch):
            return ns.summarize(ns.read_raw_csv(FIXTURE), steps=2, batch=batch, context=1,
                                weight_bytes=1000, kv_token_bytes=1, step_times=[], own=set(),
                                title="t", graph_rows=rows)
        self.assertIn("| decode graph replayed, graphs | 1,024 rows for 856 sequences: 168 "
                      "padded rows (16.4 % of its rows)", text(1024, 856))
        self.assertIn("| decode graph replayed, graphs | 864 rows: no padding |", text(864, 864))
        self.assertNotIn("decode graph replayed", text(None, 856))

    def test_graph_logs_without_one_graph_are_named_and_leave_the_row_out(self):
        with tempfile.TemporaryDirectory() as d:
            write_model(d, untied=False)
            eager = self.write(d, "no graphs\n", "eager.log")
            other = self.write(d, self.LOG.replace("1024", "864"), "graphs-2.log")
            full = self.write(d, self.LOG)
            common = ["--csv", FIXTURE, "--steps", "2", "--batch", "856", "--context", "1",
                      "--model", d]

            def run(logs):
                err, out = io.StringIO(), io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                    rc = ns.main(common + [a for p in logs for a in ("--graph-log", p)])
                return rc, out.getvalue(), err.getvalue()

            rc, _, err = run([os.path.join(d, "missing.log")])
            self.assertEqual(rc, 1)
            self.assertIn("missing.log", err)
            for logs, want in [([eager], "eager.log: no decode graph of at least 856 rows"),
                               ([full, other], "replayed different graphs for batch 856: "
                                               "1024 rows")]:
                rc, out, err = run(logs)
                self.assertEqual(rc, 0)
                self.assertIn(want, err)
                self.assertNotIn("decode graph replayed", out)
            rc, out, _ = run([full, full])
            self.assertEqual(rc, 0)
            self.assertIn("1,024 rows for 856 sequences: 168 padded rows", out)


if __name__ == "__main__":
    unittest.main()
