"""`pitdist bench data` through the CLI, in a tiny configuration (generated 8x8 and 16x16x3 images)."""

import json

import pytest


@pytest.mark.slow
def test_tiny_bench_data_writes_json(pitdist_cli, tmp_path):
    out = tmp_path / "bench.json"
    proc = pitdist_cli(
        "bench",
        "data",
        "--sizes",
        "8x8x1,16x16x3",
        "--rows",
        "600",
        "--fashion-mnist",
        "",
        "--batch-size",
        "128",
        "--train-steps",
        "1",
        "--train-batch",
        "2",
        "--train-max-tokens",
        "64",
        "--model.depth",
        "1",
        "--work-dir",
        str(tmp_path),
        "--out",
        str(out),
        timeout=300,
        check=True,
    )
    report = json.loads(out.read_text())
    assert [r["shape"] for r in report["sizes"]] == [[8, 8, 1], [16, 16, 3]]
    for row in report["sizes"]:
        assert row["rows"] == 600 and row["source"] == "generated"
        loc, ray, train = row["local"], row["ray"], row["train"]
        assert loc["images"] == 512 and loc["dropped"] == 88 and loc["images_per_s"] > 0
        assert loc["tokens_per_s"] == pytest.approx(loc["images_per_s"] * row["shape"][0] * row["shape"][1] / 2)
        assert ray["images"] == 600 - 128 and ray["images_per_s"] > 0  # timed from the second batch
        assert train["images_per_s"] > 0 and row["local_over_train"] > 1
        order = row["ray_epoch_order"]
        assert all(len(r) == 2 and min(r) > 0 for r in order["images_per_s"].values())
        assert order["shuffled_over_fixed"] > 0
        # The same images as Parquet: PNG (and JPEG for RGB) decoded by one process and by Ray Data tasks.
        formats = [pq["format"] for pq in row["parquet"]]
        assert formats == (["PNG"] if row["shape"][2] == 1 else ["PNG", "JPEG"])
        for pq in row["parquet"]:
            assert pq["decode_images_per_s_1_process"] > 0 and pq["bytes_per_image"] > 0
            assert pq["ray_1_workers"]["images_per_s"] > 0 and pq["ray_2_workers"]["images_per_s"] > 0
    assert report["sizes"][1]["train"]["estimated"] and report["sizes"][1]["train"]["measured_shape"] == [8, 8, 3]
    assert "8x8x1 (generated, 600 images): local" in proc.stdout and "Parquet PNG decode" in proc.stdout
    assert not list(tmp_path.glob("tmp*"))  # the datasets were removed


@pytest.mark.slow
def test_a_token_count_p_does_not_divide_is_fed_in_padded_shards(pitdist_cli, tmp_path):
    # 7x7 = 49 tokens on P = 2 used to be refused; rank 0 now holds S = 25 of them (rank 1 the other 24).
    out = tmp_path / "bench.json"
    pitdist_cli(
        *("bench", "data", "--sizes", "7x7x1", "--sp", "2", "--no-ray", "--rows", "256", "--fashion-mnist", ""),
        *("--batch-size", "64", "--train-steps", "1", "--train-batch", "2", "--model.depth", "1"),
        *("--work-dir", str(tmp_path), "--out", str(out)),
        timeout=300,
        check=True,
    )
    (row,) = json.loads(out.read_text())["sizes"]
    loc = row["local"]
    assert row["shape"] == [7, 7, 1] and "ray" not in row
    assert loc["tokens_per_image_per_rank"] == 25 and loc["images"] == 256
    assert loc["tokens_per_s"] == pytest.approx(loc["images_per_s"] * 25)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--sizes", "7x7x1", "--sp", "0"), "--sp, --train-steps and --train-batch must be >= 1"),
        (
            (
                "--sizes",
                "7x0x1",
            ),
            "'7x0x1': sides and channels must be >= 1",
        ),
        (
            (
                "--sizes",
                "7x7",
            ),
            "expected HxWxC such as 224x224x3",
        ),
    ],
)
def test_bad_option_exits_2(pitdist_cli, tmp_path, args, message):
    proc = pitdist_cli("bench", "data", *args, "--out", str(tmp_path / "b.json"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "b.json").exists()
